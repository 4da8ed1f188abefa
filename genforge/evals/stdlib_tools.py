"""The tools of `genforge eval tools`: 32 standard-library functions, and requests that call them.

Each tool is a small typed wrapper around a real function (`math.gcd`, `os.path.splitext`,
`calendar.isleap`, ...), made a tool by `genforge.agents.tools.tool`: the parameters' JSON schema
comes from the wrapper's type hints and `Args:` section, the description from the real function's
own docstring (its first sentence, a signature line skipped). Wrappers exist where the real
signature cannot be a JSON object (`os.path.join(*paths)` takes `parts`) or takes bytes (the
hashes and encodings take text).

The tools come in four groups of eight, each of near neighbours (gcd and lcm, degrees and radians,
mean and median), and a request is asked with its tool's whole group on offer, so the right name
has to be chosen, not just copied. Every tool has request templates whose values are drawn from a
generator seeded with the case's id: the same cases on every run, and `--limit` only drops some.
Changing a tool, template or value range changes the score: raise `VERSION` in
genforge/evals/tool_calls.py.
"""

from __future__ import annotations

import base64
import calendar
import fnmatch
import hashlib
import html
import inspect
import json
import math
import os.path
import random
import re
import shlex
import shutil
import statistics
import string
import textwrap
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Values = Callable[[random.Random], dict[str, Any]]


@dataclass(frozen=True)
class Template:
    """A request with {fields}; `values` draws them. Its keys that do not start with "_" are the
    expected arguments; "_" keys only show a value in the request (a month's name, a list)."""

    text: str
    values: Values


@dataclass(frozen=True)
class StdlibTool:
    wrapper: Callable[..., Any]  # typed: its hints and Args: section are the parameters' schema
    source: Callable[..., Any]  # the real function: its docstring is the tool's description
    group: str
    templates: tuple[Template, ...]

    @property
    def name(self) -> str:
        return self.wrapper.__name__


def describe(fn: Callable[..., Any]) -> str:
    """The first sentence of `fn`'s docstring; a leading signature paragraph
    ("hypot(*coordinates) -> value") is skipped."""
    doc = inspect.getdoc(fn) or ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    if len(paragraphs) > 1 and re.match(r"^[\w.]+\(.*\)\s*(->|-->|$)", paragraphs[0]):
        paragraphs = paragraphs[1:]
    text = paragraphs[0] if paragraphs else fn.__name__
    return re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0]  # not after "e.g."


# -- the wrappers: real functions, typed for JSON ------------------------------------------------


def math_gcd(a: int, b: int) -> int:
    """Args:
    a: the first integer
    b: the second integer
    """
    return math.gcd(a, b)


def math_lcm(a: int, b: int) -> int:
    """Args:
    a: the first integer
    b: the second integer
    """
    return math.lcm(a, b)


def math_hypot(x: float, y: float) -> float:
    """Args:
    x: the point's x coordinate
    y: the point's y coordinate
    """
    return math.hypot(x, y)


def math_sqrt(x: float) -> float:
    """Args:
    x: a number, 0 or more
    """
    return math.sqrt(x)


def math_factorial(n: int) -> int:
    """Args:
    n: a whole number, 0 or more
    """
    return math.factorial(n)


def math_comb(n: int, k: int) -> int:
    """Args:
    n: how many items there are
    k: how many are chosen
    """
    return math.comb(n, k)


def math_degrees(x: float) -> float:
    """Args:
    x: an angle in radians
    """
    return math.degrees(x)


def math_radians(x: float) -> float:
    """Args:
    x: an angle in degrees
    """
    return math.radians(x)


def string_capwords(s: str) -> str:
    """Args:
    s: the text whose words are capitalized
    """
    return string.capwords(s)


def textwrap_shorten(text: str, width: int, placeholder: str = " [...]") -> str:
    """Args:
    text: the text to shorten
    width: the most characters the result may have
    placeholder: what replaces the text that is cut
    """
    return textwrap.shorten(text, width, placeholder=placeholder)


def html_escape(s: str, quote: bool = True) -> str:
    """Args:
    s: the text to escape
    quote: also escape the quote characters " and '
    """
    return html.escape(s, quote)


def urllib_parse_quote(string: str, safe: str = "/") -> str:
    """Args:
    string: the text to percent-encode
    safe: characters that are left as they are
    """
    return urllib.parse.quote(string, safe)


def base64_b64encode(text: str) -> str:
    """Args:
    text: the text to encode (as UTF-8)
    """
    return base64.b64encode(text.encode()).decode()


def hashlib_sha256(text: str) -> str:
    """Args:
    text: the text to hash (as UTF-8)
    """
    return hashlib.sha256(text.encode()).hexdigest()


def zlib_crc32(text: str) -> int:
    """Args:
    text: the text to checksum (as UTF-8)
    """
    return zlib.crc32(text.encode())


def shlex_split(s: str) -> list[str]:
    """Args:
    s: a command line
    """
    return shlex.split(s)


def calendar_isleap(year: int) -> bool:
    """Args:
    year: the year
    """
    return calendar.isleap(year)


def calendar_monthrange(year: int, month: int) -> tuple[int, int]:
    """Args:
    year: the year
    month: the month, 1 (January) to 12 (December)
    """
    return calendar.monthrange(year, month)


def calendar_leapdays(y1: int, y2: int) -> int:
    """Args:
    y1: the first year counted
    y2: the year after the last one counted
    """
    return calendar.leapdays(y1, y2)


def calendar_weekday(year: int, month: int, day: int) -> int:
    """Args:
    year: the year
    month: the month, 1 to 12
    day: the day of the month, 1 to 31
    """
    return calendar.weekday(year, month, day)


def statistics_mean(data: list[float]) -> float:
    """Args:
    data: the numbers
    """
    return statistics.mean(data)


def statistics_median(data: list[float]) -> float:
    """Args:
    data: the numbers
    """
    return statistics.median(data)


def statistics_stdev(data: list[float]) -> float:
    """Args:
    data: the numbers (two or more)
    """
    return statistics.stdev(data)


def random_randint(a: int, b: int) -> int:
    """Args:
    a: the smallest number it may return
    b: the largest number it may return
    """
    return random.randint(a, b)


def os_path_join(parts: list[str]) -> str:
    """Args:
    parts: the path components, in order
    """
    return os.path.join(*parts)


def os_path_splitext(path: str) -> tuple[str, str]:
    """Args:
    path: a file path
    """
    return os.path.splitext(path)


def os_path_basename(path: str) -> str:
    """Args:
    path: a file path
    """
    return os.path.basename(path)


def os_path_dirname(path: str) -> str:
    """Args:
    path: a file path
    """
    return os.path.dirname(path)


def shutil_disk_usage(path: str) -> dict[str, int]:
    """Args:
    path: a path on the file system to measure
    """
    return shutil.disk_usage(path)._asdict()


def shutil_which(cmd: str) -> str | None:
    """Args:
    cmd: the command's name
    """
    return shutil.which(cmd)


def fnmatch_fnmatch(name: str, pat: str) -> bool:
    """Args:
    name: the file name
    pat: a shell-style pattern (*, ?, [seq])
    """
    return fnmatch.fnmatch(name, pat)


def json_dumps(obj: dict[str, int], indent: int | None = None, sort_keys: bool = False) -> str:
    """Args:
    obj: the object to serialize
    indent: spaces of indentation per level (none: all on one line)
    sort_keys: write the keys in sorted order
    """
    return json.dumps(obj, indent=indent, sort_keys=sort_keys)


# -- values --------------------------------------------------------------------------------------

MONTHS = list(calendar.month_name)[1:]
PHRASES = (
    "the quick brown fox",
    "a tale of two cities",
    "hello world from python",
    "notes on the garden shed",
    "meeting minutes for tuesday",
    "war and peace",
    "how to bake sourdough bread",
    "the old man and the sea",
)
WORDS = ("hello", "genforge", "password123", "open sesame", "tea time", "café", "spam and eggs")
MARKUP = ("<b>Tom & Jerry</b>", "5 < 6 & 7 > 3", '<a href="x">link</a>', "Fish & Chips <3")
URL_TEXT = ("hello world", "café au lait", "a&b=c", "50% off!", "search terms here")
COMMANDS = (
    'git commit -m "first commit"',
    "ls -la /tmp",
    "grep -r 'needle' src",
    'echo "hello there" world',
    "tar -xzf archive.tar.gz -C out",
)
LONG_TEXTS = (
    "The meeting has been moved to Thursday afternoon because the projector is broken",
    "Please remember to water the plants while I am away on holiday next week",
    "Our new release fixes the login bug and makes the search page much faster",
    "It was the best of times, it was the worst of times, it was the age of wisdom",
)
DIRS = ("/home/alice", "/var/log", "/usr/local/lib", "data/raw", "/tmp/build", "docs")
FILES = ("report.pdf", "photo.jpeg", "main.py", "archive.tar.gz", "notes.txt", "index.html")
PROGRAMS = ("python3", "git", "ls", "gcc", "curl", "tar", "make")
PATTERNS = (("*.py", ".py"), ("*.txt", ".txt"), ("data_??.csv", ".csv"), ("[abc]*.log", ".log"))
KEYS = ("apples", "pears", "plums", "width", "height", "count", "year")


def _pair_with_factor(r: random.Random) -> dict[str, Any]:
    g = r.randint(2, 12)
    a, b = g * r.randint(2, 25), g * r.randint(2, 25)
    return {"a": a, "b": b}


def _numbers(r: random.Random) -> dict[str, Any]:
    data = [r.randint(1, 60) for _ in range(r.randint(4, 7))]
    return {"data": data, "_list": ", ".join(map(str, data))}


def _path(r: random.Random) -> dict[str, Any]:
    return {"path": f"{r.choice(DIRS)}/{r.choice(FILES)}"}


def _date(r: random.Random) -> dict[str, Any]:
    year, month = r.randint(1950, 2040), r.randint(1, 12)
    day = r.randint(1, calendar.monthrange(year, month)[1])
    return {"year": year, "month": month, "day": day, "_month": MONTHS[month - 1]}


def _month(r: random.Random) -> dict[str, Any]:
    month = r.randint(1, 12)
    return {"year": r.randint(1900, 2100), "month": month, "_month": MONTHS[month - 1]}


def _dict(r: random.Random) -> dict[str, Any]:
    obj = {k: r.randint(0, 99) for k in r.sample(KEYS, r.randint(2, 3))}
    return {"obj": obj, "_obj": json.dumps(obj)}


def _angle_degrees(r: random.Random) -> dict[str, Any]:
    return {"x": r.choice((30, 45, 60, 90, 120, 135, 180, 270, 360, 15, 75))}


def _angle_radians(r: random.Random) -> dict[str, Any]:
    return {"x": r.choice((0.5, 1, 1.5, 2, 2.5, 3, 3.14, 0.25, 4, 6.28))}


def _t(text: str, values: Values) -> Template:
    return Template(text, values)


def _text(choices: tuple[str, ...], key: str = "text") -> Values:
    return lambda r: {key: r.choice(choices)}


# -- the catalogue ---------------------------------------------------------------------------------

TOOLS = (
    # numbers: math
    StdlibTool(
        math_gcd,
        math.gcd,
        "numbers",
        (
            _t("What is the greatest common divisor of {a} and {b}?", _pair_with_factor),
            _t("Find the GCD of {a} and {b}.", _pair_with_factor),
            _t("What is the largest number that divides both {a} and {b}?", _pair_with_factor),
        ),
    ),
    StdlibTool(
        math_lcm,
        math.lcm,
        "numbers",
        (
            _t("What is the least common multiple of {a} and {b}?", _pair_with_factor),
            _t("Find the LCM of {a} and {b}.", _pair_with_factor),
            _t("What is the smallest number that both {a} and {b} divide?", _pair_with_factor),
        ),
    ),
    StdlibTool(
        math_hypot,
        math.hypot,
        "numbers",
        (
            _t(
                "How far is the point ({x}, {y}) from the origin?",
                lambda r: {"x": r.randint(1, 40), "y": r.randint(1, 40)},
            ),
            _t(
                "A right triangle has legs of {x} and {y}. How long is the hypotenuse?",
                lambda r: {"x": r.randint(2, 30), "y": r.randint(2, 30)},
            ),
        ),
    ),
    StdlibTool(
        math_sqrt,
        math.sqrt,
        "numbers",
        (
            _t("What is the square root of {x}?", lambda r: {"x": r.randint(2, 999)}),
            _t("Compute the square root of {x}.", lambda r: {"x": r.randint(2, 99) + 0.5}),
        ),
    ),
    StdlibTool(
        math_factorial,
        math.factorial,
        "numbers",
        (
            _t("What is {n} factorial?", lambda r: {"n": r.randint(3, 20)}),
            _t("Compute {n}!", lambda r: {"n": r.randint(3, 20)}),
            _t(
                "In how many different orders can {n} people stand in a line?",
                lambda r: {"n": r.randint(3, 12)},
            ),
        ),
    ),
    StdlibTool(
        math_comb,
        math.comb,
        "numbers",
        (
            _t(
                "How many ways are there to choose {k} items from {n}, ignoring order?",
                lambda r: {"n": r.randint(6, 50), "k": r.randint(2, 5)},
            ),
            _t(
                "How many different {k}-person committees can be formed from {n} people?",
                lambda r: {"n": r.randint(6, 30), "k": r.randint(2, 5)},
            ),
            _t("What is {n} choose {k}?", lambda r: {"n": r.randint(6, 40), "k": r.randint(2, 6)}),
        ),
    ),
    StdlibTool(
        math_degrees,
        math.degrees,
        "numbers",
        (
            _t("Convert {x} radians to degrees.", _angle_radians),
            _t("How many degrees is an angle of {x} radians?", _angle_radians),
        ),
    ),
    StdlibTool(
        math_radians,
        math.radians,
        "numbers",
        (
            _t("Convert {x} degrees to radians.", _angle_degrees),
            _t("What is an angle of {x} degrees in radians?", _angle_degrees),
        ),
    ),
    # text
    StdlibTool(
        string_capwords,
        string.capwords,
        "text",
        (
            _t("Capitalize every word of '{s}'.", _text(PHRASES, "s")),
            _t('Make each word of "{s}" start with a capital letter.', _text(PHRASES, "s")),
        ),
    ),
    StdlibTool(
        textwrap_shorten,
        textwrap.shorten,
        "text",
        (
            _t(
                "Shorten '{text}' to fit in {width} characters.",
                lambda r: {"text": r.choice(LONG_TEXTS), "width": r.choice((20, 30, 40, 50))},
            ),
            _t(
                "Truncate \"{text}\" to at most {width} characters, ending it with '{placeholder}'.",
                lambda r: {
                    "text": r.choice(LONG_TEXTS),
                    "width": r.choice((25, 35, 45)),
                    "placeholder": r.choice(("...", " (more)", "~")),
                },
            ),
        ),
    ),
    StdlibTool(
        html_escape,
        html.escape,
        "text",
        (
            _t("Escape '{s}' so that it is safe to put in HTML.", _text(MARKUP, "s")),
            _t("Make the string {s} HTML-safe.", _text(MARKUP, "s")),
        ),
    ),
    StdlibTool(
        urllib_parse_quote,
        urllib.parse.quote,
        "text",
        (
            _t("URL-encode the text '{string}'.", _text(URL_TEXT, "string")),
            _t('Percent-encode "{string}" for use in a URL.', _text(URL_TEXT, "string")),
        ),
    ),
    StdlibTool(
        base64_b64encode,
        base64.b64encode,
        "text",
        (
            _t("Encode '{text}' in Base64.", _text(WORDS)),
            _t('What is the base64 encoding of the text "{text}"?', _text(WORDS)),
        ),
    ),
    StdlibTool(
        hashlib_sha256,
        hashlib.sha256,
        "text",
        (
            _t("What is the SHA-256 hash of '{text}'?", _text(WORDS)),
            _t('Compute the sha256 digest of the text "{text}".', _text(WORDS)),
        ),
    ),
    StdlibTool(
        zlib_crc32,
        zlib.crc32,
        "text",
        (
            _t("Compute the CRC-32 checksum of '{text}'.", _text(WORDS)),
            _t('What is the crc32 of "{text}"?', _text(WORDS)),
        ),
    ),
    StdlibTool(
        shlex_split,
        shlex.split,
        "text",
        (
            _t("Split the shell command `{s}` into its arguments.", _text(COMMANDS, "s")),
            _t("Tokenize this command line the way a shell would: {s}", _text(COMMANDS, "s")),
        ),
    ),
    # dates and data
    StdlibTool(
        calendar_isleap,
        calendar.isleap,
        "dates_and_data",
        (
            _t("Is {year} a leap year?", lambda r: {"year": r.randint(1800, 2400)}),
            _t("Does February have 29 days in {year}?", lambda r: {"year": r.randint(1800, 2400)}),
        ),
    ),
    StdlibTool(
        calendar_monthrange,
        calendar.monthrange,
        "dates_and_data",
        (
            _t("How many days are there in {_month} {year}?", _month),
            _t("On which weekday does {_month} {year} begin, and how long is it?", _month),
        ),
    ),
    StdlibTool(
        calendar_leapdays,
        calendar.leapdays,
        "dates_and_data",
        (
            _t(
                "How many leap years are there from {y1} up to, but not including, {y2}?",
                lambda r: {"y1": (y := r.randint(1800, 2000)), "y2": y + r.randint(10, 200)},
            ),
        ),
    ),
    StdlibTool(
        calendar_weekday,
        calendar.weekday,
        "dates_and_data",
        (
            _t("What day of the week was {_month} {day}, {year}?", _date),
            _t("Which weekday is {day} {_month} {year}?", _date),
        ),
    ),
    StdlibTool(
        statistics_mean,
        statistics.mean,
        "dates_and_data",
        (
            _t("What is the average of {_list}?", _numbers),
            _t("Compute the mean of these numbers: {_list}.", _numbers),
        ),
    ),
    StdlibTool(
        statistics_median,
        statistics.median,
        "dates_and_data",
        (
            _t("What is the median of {_list}?", _numbers),
            _t("Find the middle value of {_list}.", _numbers),
        ),
    ),
    StdlibTool(
        statistics_stdev,
        statistics.stdev,
        "dates_and_data",
        (
            _t("What is the sample standard deviation of {_list}?", _numbers),
            _t("How spread out are these numbers: {_list}? Give the standard deviation.", _numbers),
        ),
    ),
    StdlibTool(
        random_randint,
        random.randint,
        "dates_and_data",
        (
            _t(
                "Pick a random integer between {a} and {b}, both included.",
                lambda r: {"a": (a := r.randint(0, 50)), "b": a + r.randint(5, 500)},
            ),
            _t("Roll a die with {b} sides.", lambda r: {"a": 1, "b": r.choice((4, 6, 8, 12, 20))}),
        ),
    ),
    # files and paths
    StdlibTool(
        os_path_join,
        os.path.join,
        "files",
        (
            _t(
                "Join '{_dir}' and '{_file}' into one path.",
                lambda r: {
                    "parts": [(d := r.choice(DIRS)), (f := r.choice(FILES))],
                    "_dir": d,
                    "_file": f,
                },
            ),
            _t(
                "Build the path of {_file} inside the folder {_sub} of {_dir}.",
                lambda r: {
                    "parts": [
                        (d := r.choice(DIRS)),
                        (s := r.choice(("src", "out", "images"))),
                        (f := r.choice(FILES)),
                    ],
                    "_dir": d,
                    "_sub": s,
                    "_file": f,
                },
            ),
        ),
    ),
    StdlibTool(
        os_path_splitext,
        os.path.splitext,
        "files",
        (
            _t("Split the extension off the path '{path}'.", _path),
            _t("Separate {path} into its name and its extension.", _path),
        ),
    ),
    StdlibTool(
        os_path_basename,
        os.path.basename,
        "files",
        (
            _t("What is the file name at the end of the path '{path}'?", _path),
            _t("Give me just the last component of {path}.", _path),
        ),
    ),
    StdlibTool(
        os_path_dirname,
        os.path.dirname,
        "files",
        (
            _t("Which directory is '{path}' in?", _path),
            _t("What is the parent folder of {path}?", _path),
        ),
    ),
    StdlibTool(
        shutil_disk_usage,
        shutil.disk_usage,
        "files",
        (
            _t(
                "How much free disk space is there at {path}?",
                _text(("/", "/home", "/tmp"), "path"),
            ),
            _t(
                "Show the disk usage of the file system that holds '{path}'.",
                _text(("/", "/var", "/home/alice"), "path"),
            ),
        ),
    ),
    StdlibTool(
        shutil_which,
        shutil.which,
        "files",
        (
            _t("Where is the {cmd} program installed?", _text(PROGRAMS, "cmd")),
            _t("Find the full path of the '{cmd}' executable.", _text(PROGRAMS, "cmd")),
        ),
    ),
    StdlibTool(
        fnmatch_fnmatch,
        fnmatch.fnmatch,
        "files",
        (
            _t(
                "Does the file name '{name}' match the pattern '{pat}'?",
                lambda r: {
                    "name": r.choice(("data_01", "app", "build", "readme", "bob"))
                    + r.choice(PATTERNS)[1],
                    "pat": r.choice(PATTERNS)[0],
                },
            ),
        ),
    ),
    StdlibTool(
        json_dumps,
        json.dumps,
        "files",
        (
            _t("Serialize the object {_obj} to a JSON string.", _dict),
            _t(
                "Write {_obj} as JSON with its keys sorted.",
                lambda r: {**_dict(r), "sort_keys": True},
            ),
            _t(
                "Pretty-print {_obj} as JSON indented by {indent} spaces.",
                lambda r: {**_dict(r), "indent": r.choice((2, 4))},
            ),
        ),
    ),
)

GROUPS = tuple(dict.fromkeys(t.group for t in TOOLS))
