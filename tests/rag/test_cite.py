"""Citation markers read only from prose, and sentence-level attribution measured on a labelled set."""

from __future__ import annotations

import pytest

from genforge.rag.cite import markers, prose

PYTHON_ANSWER = """\
Use a dictionary of lists [1]:

```python
x = {"a": [1, 2, 3]}
x["b"] = [2, 3]
for n in [1, 2]:
    print(n)
```

Each value is a list, as the tutorial shows [2]. Appending works in place [3].
"""

# (answer, number of sources, the marker groups read from it)
MARKER_CASES = [
    # prose citations
    ("Paris is the capital [1].", 3, [(1,)]),
    ("Paris is the capital.[1]", 3, [(1,)]),
    ("Paris is the capital[1].", 3, [(1,)]),
    ("as shown in [2] and [3]", 3, [(2,), (3,)]),
    ("It opened in 1830 [1][2].", 3, [(1,), (2,)]),
    ("Both say so [1, 2].", 3, [(1, 2)]),
    ("Both say so [1,2]; the third disagrees [3].", 3, [(1, 2), (3,)]),
    ("In [1], the capital is Paris.", 3, [(1,)]),
    ("The capital is Paris (see [2]).", 3, [(2,)]),
    ("[1] Paris is the capital.", 2, [(1,)]),
    ("Sources: [1], [2]", 2, [(1,), (2,)]),
    ("- Paris is the capital [1]\n- Rome is Italy's [2]", 2, [(1,), (2,)]),
    ("**Paris** is the capital [1].", 2, [(1,)]),
    # numbers that are not sources shown, or not a citation group
    ("See [7].", 3, []),
    ("See [0].", 3, []),
    ("See [1, 1].", 3, []),
    ("See [01].", 3, []),
    ("Both say so [1, 5].", 3, []),
    # code and data
    ('x = {"a": [1, 2, 3]}', 3, []),
    ("x = [1, 2]", 3, []),
    ("lst == [1, 2]", 3, []),
    ("f([1, 2])", 3, []),
    ("print(x, [1, 2])", 3, []),
    ("matrix = [[1, 2], [3, 1]]", 3, []),
    ("sorted([3, 1, 2]) returns [1, 2, 3].", 3, []),
    ("The result is [1, 2].", 3, []),
    ("for n in [1, 2]:", 3, []),
    ("[1, 2] + [3]", 3, []),
    ("[1, 2].append(3)", 3, []),
    ("[1, 2] == [2, 1]", 3, []),
    ("x[1] is the second item.", 3, []),
    ("sys.argv[1] holds the first argument.", 3, []),
    ("f(x)[1] and 'ab'[1] index.", 3, []),
    ("matrix[1][2] is one cell.", 3, []),
    ("The first cell is at [1][0].", 3, []),
    ("See [1](https://example.com).", 3, []),
    ("Use `x = [1, 2]` to make a list [1].", 3, [(1,)]),
    ("Use ``a[1]`` here.", 3, []),
    (">>> [1, 2, 3]\n[1, 2, 3]", 3, []),
    ("def f() -> [1]:", 3, []),
    ("a list like {1: [2]}", 3, []),
    ("items: [1, 2]", 3, []),
    (PYTHON_ANSWER, 3, [(1,), (2,), (3,)]),
    ("```\nx = [1]\n```\nUnclosed fence [1]\n```\ny = [2]", 3, [(1,)]),
]


@pytest.mark.parametrize(("answer", "count", "expected"), MARKER_CASES)
def test_markers_only_from_prose(answer, count, expected):
    assert [m.numbers for m in markers(answer, count)] == expected


def test_prose_blanks_code_but_keeps_positions():
    text = "a `b[1]` c\n```\nd = [2]\n```\ne [1]"
    clean = prose(text)
    assert len(clean) == len(text) and clean.count("\n") == text.count("\n")
    assert "[2]" not in clean and "b[1]" not in clean and clean.endswith("e [1]")
