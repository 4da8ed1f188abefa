from hypothesis import given
from hypothesis import strategies as st

from genforge.generate.text import StopMatcher, stream_text


def run_matcher(chunks, stops):
    m = StopMatcher(stops)
    out = []
    for c in chunks:
        text, hit = m.push(c)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + m.flush(), False


@given(st.text(alphabet="abc<>", max_size=40), st.lists(st.integers(0, 40), max_size=8))
def test_stop_strings_cut_at_first_occurrence_however_text_is_split(text, cuts):
    stops = ["<a>", "bb"]
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    got, hit = run_matcher(chunks, stops)
    first = min((i for s in stops if (i := text.find(s)) >= 0), default=None)
    assert hit == (first is not None)
    assert got == (text if first is None else text[:first])


def test_text_that_may_start_a_stop_string_is_held_back_until_decided():
    m = StopMatcher(["STOP"])
    assert m.push("hello ST") == ("hello ", False)
    assert m.push("ONG") == ("STONG", False)


class CharDecoder:  # one character per token id, for testing the text layer alone
    def step(self, token):
        return chr(token)

    def flush(self):
        return ""


def test_stream_text_reports_finish_reasons_and_all_tokens():
    ids = [ord(c) for c in "hi there"]
    deltas = list(stream_text(iter(ids + [0]), CharDecoder(), frozenset({0}), []))
    assert "".join(d.text for d in deltas) == "hi there"
    assert deltas[-1].finish_reason == "stop"
    assert sum(len(d.token_ids) for d in deltas) == len(ids) + 1  # eos counted

    deltas = list(stream_text(iter(ids), CharDecoder(), frozenset({0}), []))
    assert deltas[-1].finish_reason == "length"

    deltas = list(stream_text(iter(ids), CharDecoder(), frozenset({0}), ["the"]))
    assert "".join(d.text for d in deltas) == "hi " and deltas[-1].finish_reason == "stop"
