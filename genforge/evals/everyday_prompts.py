"""The prompts of `genforge eval everyday` and `genforge eval rag_pydocs`, as data.

Each is a dict with a `kind`:
- "chat": `prompt` (and optionally `system`); `expect`: answers of which one must appear as a word
  (case-folded; a trailing `*` matches any ending, "cach*" is "cache", "caches", "caching"), or
  none for open prompts where only ending and looping are scored;
- "json": `prompt`, `schema` (the answer is decoded under it); `expect`: key -> value the parsed
  answer must hold (strings case-folded), or none;
- "rag": a question over the Python documentation; `expect`: answers of which one must appear,
  `source`: the documentation file (under the docs' `_sources`) that holds the answer;
- "rag_unanswerable": a question the documentation cannot answer: the right reply is a refusal;
- "rag_beyond": the same, but on-topic (other Python libraries): the documents' words are near, so
  retrieval alone cannot tell, and the right reply is still a refusal.
Changing any of them changes the score: raise `VERSION` in genforge/evals/everyday.py.
"""

from __future__ import annotations


def _chat(prompt: str, *expect: str, system: str | None = None) -> dict:
    item = {"kind": "chat", "prompt": prompt, "expect": list(expect)}
    if system:
        item["system"] = system
    return item


def _obj(**props) -> dict:
    """A closed object schema: every property required, no others."""
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


STR, INT, NUM, BOOL = ({"type": t} for t in ("string", "integer", "number", "boolean"))

CHAT = [
    # arithmetic
    _chat("What is 7 times 8?", "56"),
    _chat("What is 15 plus 27?", "42"),
    _chat("What is 100 minus 37?", "63"),
    _chat("What is 144 divided by 12?", "is 12", "= 12", "equals 12", "twelve"),  # 12 is asked
    _chat("What is 9 squared?", "81"),
    _chat("What is half of 50?", "25"),
    _chat("What is 20% of 150?", "30"),
    _chat("What is the square root of 81?", "9", "nine"),
    # capitals
    _chat("What is the capital of France?", "Paris"),
    _chat("What is the capital of Japan?", "Tokyo"),
    _chat("What is the capital of Italy?", "Rome"),
    _chat("What is the capital of Germany?", "Berlin"),
    _chat("What is the capital of Spain?", "Madrid"),
    _chat("What is the capital of Canada?", "Ottawa"),
    _chat("What is the capital of Australia?", "Canberra"),
    _chat("What is the capital of Egypt?", "Cairo"),
    _chat("What is the capital of Brazil?", "Brasília", "Brasilia"),
    _chat("What is the capital of the United Kingdom?", "London"),
    # units
    _chat("How many centimeters are in a meter?", "100", "one hundred"),
    _chat("How many minutes are in an hour?", "60", "sixty"),
    _chat("How many days are in a week?", "7", "seven"),
    _chat("How many grams are in a kilogram?", "1000", "1,000", "one thousand"),
    _chat("How many seconds are in a minute?", "60", "sixty"),
    _chat("How many hours are in a day?", "24", "twenty-four"),
    _chat("What is 0 degrees Celsius in Fahrenheit?", "32"),
    _chat("How many meters are in a kilometer?", "1000", "1,000", "one thousand"),
    # short facts
    _chat("What color is the sky on a clear day?", "blue"),
    _chat("What is the chemical formula of water?", "H2O", "H₂O"),
    _chat("What is the largest planet in the solar system?", "Jupiter"),
    _chat("Who wrote Romeo and Juliet?", "Shakespeare"),
    _chat("What is the opposite of hot?", "cold"),
    _chat("What gas do plants take in from the air for photosynthesis?", "carbon dioxide", "CO2"),
    _chat("How many legs does a spider have?", "8", "eight"),
    _chat("At what temperature in Celsius does water freeze?", "0", "zero"),
    _chat("What is the plural of mouse?", "mice"),
    _chat("Translate 'thank you' into French.", "merci"),
    _chat("Translate 'hello' into Spanish.", "hola"),
    _chat("In Python, what does len([1, 2, 3]) return?", "is 3", "returns 3", "= 3", "three"),
    _chat("Which keyword defines a function in Python?", "def"),
    _chat("What programming language is this: print('hi')?", "Python"),
    # open: only ending and looping are scored
    _chat("Tell me a joke", system="You are terse."),
    _chat("Write a haiku about autumn."),
    _chat("Give me three tips for better sleep."),
    _chat("Describe a cat in one sentence."),
    _chat("Write a short thank-you note to a colleague."),
    _chat("Explain what a database is to a child."),
    _chat("Suggest a name for a pet goldfish."),
    _chat("Réponds en français : qu'est-ce que Python ?"),
    _chat("Summarize the plot of Cinderella in two sentences."),
    _chat("Write a limerick about a programmer."),
]

JSON = [
    {"prompt": "Invent a user.", "schema": _obj(name=STR, age=INT, email=STR)},
    {
        "prompt": "Invent a city.",
        "schema": _obj(name=STR, country=STR, population=INT, description=STR),
    },
    {
        "prompt": "What is the capital of France? Answer in JSON.",
        "schema": _obj(country=STR, capital=STR),
        "expect": {"capital": "Paris"},
    },
    {
        "prompt": "List the three primary colors.",
        "schema": _obj(colors={"type": "array", "items": STR}),
    },
    {"prompt": "Describe a book.", "schema": _obj(title=STR, author=STR, year=INT)},
    {
        "prompt": "Extract the name and age from: 'Alice is 30 years old.'",
        "schema": _obj(name=STR, age=INT),
        "expect": {"name": "Alice", "age": 30},
    },
    {"prompt": "Make a to-do item for buying milk.", "schema": _obj(task=STR, done=BOOL)},
    {
        "prompt": "What is the sentiment of the review 'I love this!'?",
        "schema": _obj(sentiment={"enum": ["positive", "negative", "neutral"]}),
        "expect": {"sentiment": "positive"},
    },
    {
        "prompt": "Convert 5 kilometers to meters.",
        "schema": _obj(meters=NUM),
        "expect": {"meters": 5000},
    },
    {
        "prompt": "Invent a product for an online shop.",
        "schema": _obj(name=STR, price=NUM, in_stock=BOOL),
    },
    {
        "prompt": "Give a weather report for a sunny day.",
        "schema": _obj(temperature_c=NUM, condition=STR),
    },
    {
        "prompt": "Invent a movie.",
        "schema": _obj(title=STR, year=INT, genres={"type": "array", "items": STR}),
    },
    {"prompt": "What is 2 + 2?", "schema": _obj(answer=INT), "expect": {"answer": 4}},
    {
        "prompt": "Extract the city from: 'I live in Berlin.'",
        "schema": _obj(city=STR),
        "expect": {"city": "Berlin"},
    },
    {
        "prompt": "Create a contact card for Bob.",
        "schema": _obj(name=STR, phone=STR),
        "expect": {"name": "Bob"},
    },
]

_FUNCS = "library/functions.rst.txt"
_CONTROL = "tutorial/controlflow.rst.txt"
_DATA = "tutorial/datastructures.rst.txt"
_ERRORS = "tutorial/errors.rst.txt"
RAG = [
    ("What does functools.lru_cache do?", "library/functools.rst.txt", ["cach*", "memoiz*"]),
    ("When does the else clause of a for loop run?", _CONTROL, ["break", "exhaust*", "no break"]),
    ("What does the pass statement do?", _CONTROL, ["nothing"]),
    ("How do you create an empty set in Python?", _DATA, ["set()"]),
    ("What does enumerate return?", _FUNCS, ["tuple*", "count*", "index*", "enumerate object"]),
    ("Which module provides the deque class?", "library/collections.rst.txt", ["collections"]),
    (
        "What does itertools.chain do?",
        "library/itertools.rst.txt",
        ["iterable*", "sequence*", "one after another", "consecutive*"],
    ),
    (
        "What does the zip function do?",
        _FUNCS,
        ["parallel", "tuple*", "pair*", "aggregat*", "combin*"],
    ),
    ("What exception is raised when dividing by zero?", _ERRORS, ["ZeroDivisionError"]),
    ("When does a finally clause run?", _ERRORS, ["whether or not", "always", "regardless"]),
    ("What is the difference between a tuple and a list?", _DATA, ["immutable", "mutable"]),
    (
        "What does collections.Counter count?",
        "library/collections.rst.txt",
        ["hashable", "element*", "occurrence*", "item*"],
    ),
    (
        "What does os.path.join do?",
        "library/os.path.rst.txt",
        ["combin*", "concatenat*", "segment*", "component*"],
    ),
    ("How do you create a virtual environment?", "tutorial/venv.rst.txt", ["venv"]),
    (
        "What is the __init__.py file of a package for?",
        "tutorial/modules.rst.txt",
        ["treat*", "initiali*", "mark*", "regular package*"],
    ),
    (
        "What does random.choice return?",
        "library/random.rst.txt",
        ["random element", "random item", "element*"],
    ),
    (
        "What does the dataclass decorator add to a class?",
        "library/dataclasses.rst.txt",
        ["__init__", "special method*", "__repr__", "__eq__"],
    ),
    ("How do you turn a Python object into a JSON string?", "library/json.rst.txt", ["dumps"]),
    ("How do you read JSON from a file?", "library/json.rst.txt", ["json.load", "load("]),
    (
        "What does the with statement do when opening a file?",
        "tutorial/inputoutput.rst.txt",
        ["close*"],
    ),
    (
        "What does the break statement do in a loop?",
        _CONTROL,
        ["innermost", "out of the loop", "exit*", "terminat*", "stop*"],
    ),
    ("What does the continue statement do?", _CONTROL, ["next iteration", "skip*"]),
    (
        "What does range(5) produce?",
        _CONTROL,
        ["0, 1, 2, 3, 4", "0 to 4", "0 through 4", "0 up to 4"],
    ),
    ("What is a generator in Python?", "tutorial/classes.rst.txt", ["yield*", "iterator*"]),
    ("How do you sort a list in place?", _DATA, ["sort()", "list.sort", ".sort"]),
]

UNANSWERABLE = [
    "What is the airspeed velocity of an unladen swallow?",
    "Who won the 2018 FIFA World Cup?",
    "What is the boiling point of mercury?",
    "How many moons does Jupiter have?",
    "What is the recipe for a margherita pizza?",
    "Who painted the Mona Lisa?",
    "What is the population of Tokyo?",
    "How do I change a flat tire on a car?",
    "What is the price of gold today?",
    "Which Rust crate parses TOML files?",
]

# Written after the refusal threshold was chosen (CALIBRATION below), so they test it too.
BEYOND = [
    "How do I read an Excel spreadsheet with openpyxl?",
    "How do I scrape a web page with BeautifulSoup?",
    "What does numpy.reshape do?",
    "How do I share a fixture between pytest test files?",
    "How do I deploy a Flask app with gunicorn?",
    "How do I connect to a MySQL database from Python?",
    "How do I handle SIGTERM with the signal module?",
    "How do I encrypt data with the cryptography library's Fernet?",
    "How do I train a classifier with scikit-learn?",
    "How do I load environment variables from a .env file with python-dotenv?",
]

PROMPTS: list[dict] = [
    *CHAT,
    *({"kind": "json", "expect": {}, **j} for j in JSON),
    *({"kind": "rag", "prompt": q, "source": s, "expect": e} for q, s, e in RAG),
    *({"kind": "rag_unanswerable", "prompt": q, "expect": []} for q in UNANSWERABLE),
    *({"kind": "rag_beyond", "prompt": q, "expect": []} for q in BEYOND),
]

# Questions apart from the evaluation's, for choosing the similarity below which `rag ask` says it
# doesn't know (benchmarks/rag_refusal.py): answerable ones over the same documents, off-topic
# ones, and on-topic ones the indexed documents do not answer (other libraries, other versions).
CALIBRATION: list[dict] = [
    *(
        {"kind": "answerable", "prompt": q}
        for q in (
            "What does functools.partial return?",
            "What does itertools.groupby do?",
            "What is a namedtuple?",
            "How do you pretty-print JSON with indentation?",
            "What does os.path.exists return for a broken symbolic link?",
            "How do you shuffle a list randomly?",
            "What does the built-in function len return?",
            "How do you give a dataclass field a default value?",
            "What is a lambda expression?",
            "How do you read a file line by line?",
            "What is a list comprehension?",
            "What does the global statement do?",
            "How do you raise an exception?",
            "What does sorted() return?",
            "What does functools.reduce do?",
            "What does collections.defaultdict do?",
            "How do you format a number with two decimal places in an f-string?",
            "What does random.seed do?",
            "What does os.path.splitext return?",
            "How do you define a class with a method?",
        )
    ),
    *(
        {"kind": "off_topic", "prompt": q}
        for q in (
            "What is the capital of Australia?",
            "How tall is Mount Everest?",
            "Who wrote Pride and Prejudice?",
            "What is the speed of light?",
            "How do I bake sourdough bread?",
            "In which year did the Berlin Wall fall?",
            "How many players are on a football team?",
            "What is the chemical symbol for gold?",
            "What is the best exercise for back pain?",
            "Who is the chief executive of Microsoft?",
        )
    ),
    *(
        {"kind": "on_topic", "prompt": q}
        for q in (
            "How do I make an HTTP request with the requests library?",
            "How do I plot a line chart with matplotlib?",
            "How do I connect to a PostgreSQL database from Python?",
            "How do I write a view in Django?",
            "What does pandas.DataFrame.merge do?",
            "How do I train a neural network with PyTorch?",
            "What is new in Python 3.13?",
            "How do I run coroutines concurrently with asyncio.gather?",
            "How do I parse command-line arguments with argparse?",
            "How do I send an email with smtplib?",
        )
    ),
]
