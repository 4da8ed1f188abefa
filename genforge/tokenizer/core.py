"""The `Tokenizer`: text <-> ids, chat templates and streaming decode over a HF `tokenizers` object.

It is built from a GGUF file's metadata or from a Hugging Face model directory, and owns the
decisions the engine should not care about: when to prepend BOS, which ids end a turn, and how to
turn a chat into a prompt. Everything else is delegated to the `tokenizers.Tokenizer` in `.hf`.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from genforge.errors import GenforgeError
from genforge.tokenizer.chat import render_chat_template
from genforge.tokenizer.gguf import add_bos_default, tokenizer_from_gguf

# Pieces that end an assistant turn when a model marks them special. A chat model often stops on
# one that is not its `eos_token_id` (SmolLM2 and Qwen write <|im_end|>, Gemma <end_of_turn>).
TURN_END_PIECES = frozenset(
    ("<|im_end|>", "<end_of_turn>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>")
)


class Tokenizer:
    """Encodes and decodes text for one model; `.hf` is the underlying `tokenizers.Tokenizer`."""

    def __init__(
        self,
        hf: HFTokenizer,
        bos_id: int | None = None,
        eos_id: int | None = None,
        eos_ids: frozenset[int] = frozenset(),
        add_bos: bool = False,
        chat_template: str | None = None,
        name: str = "This model",
    ):
        self.hf = hf
        self.bos_id = bos_id
        self.eos_ids = frozenset(eos_ids) | ({eos_id} if eos_id is not None else set())
        self.add_bos = add_bos and bos_id is not None
        self.chat_template = chat_template
        self.name = name  # used in error messages
        # Templates write these as text (HF passes `bos_token`/`eos_token` to every template).
        self._bos_text = hf.id_to_token(bos_id) if bos_id is not None else None
        self._eos_text = hf.id_to_token(eos_id) if eos_id is not None else None

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> Tokenizer:
        """Build from `read_gguf(path).metadata`."""
        hf = tokenizer_from_gguf(metadata)
        eos_id = metadata.get("tokenizer.ggml.eos_token_id")
        extra_ends = {metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom")}
        return cls(
            hf,
            bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
            eos_id=eos_id,
            eos_ids=frozenset(extra_ends - {None}) | _turn_end_ids(hf),
            add_bos=add_bos_default(metadata),
            chat_template=metadata.get("tokenizer.chat_template"),
            name=metadata.get("general.name") or "This model",
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Build from a Hugging Face model directory (`tokenizer.json` and its config files)."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise GenforgeError(
                f"{path} has no tokenizer.json; pass a Hugging Face model directory that has one "
                "or a .gguf file."
            )
        hf = HFTokenizer.from_file(str(path / "tokenizer.json"))
        config = _read_json(path / "tokenizer_config.json")
        generation = _read_json(path / "generation_config.json")
        bos_id = _token_id(hf, config.get("bos_token"))
        if bos_id is None:
            bos_id = generation.get("bos_token_id")
        eos_id = _token_id(hf, config.get("eos_token"))
        gen_eos = generation.get("eos_token_id")
        gen_eos = [gen_eos] if isinstance(gen_eos, int) else gen_eos or []
        if eos_id is None and gen_eos:
            eos_id = gen_eos[0]
        add_bos = config.get("add_bos_token")
        if add_bos is None:  # not stated: trust what the tokenizer.json post-processor does
            add_bos = bos_id is not None and hf.encode("a").ids[:1] == [bos_id]
        return cls(
            hf,
            bos_id=bos_id,
            eos_id=eos_id,
            eos_ids=frozenset(gen_eos) | _turn_end_ids(hf),
            add_bos=bool(add_bos),
            chat_template=_dir_chat_template(path, config),
            name=path.name or str(path),
        )

    def save(self, folder: str | Path, chat_template: str | None = None) -> None:
        """Write `tokenizer.json` and `tokenizer_config.json` into `folder` (a Hugging Face model
        folder's tokenizer files, which `from_dir` and transformers read back)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(folder / "tokenizer.json"))
        config = {
            "bos_token": self._bos_text,
            "eos_token": self._eos_text,
            "add_bos_token": self.add_bos,
            "chat_template": chat_template or self.chat_template,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Text -> ids; special-token text such as "<|im_start|>" becomes its id, as in HF."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_special and self.add_bos else ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> str:
        """One token as text, for debugging; a piece of a multi-byte character shows as its raw piece."""
        piece = self.hf.id_to_token(token_id)
        if piece is None:
            raise GenforgeError(
                f"Token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1}); "
                "pass an id below the vocabulary size."
            )
        text = self.hf.decode([token_id], skip_special_tokens=False)
        return piece if "\ufffd" in text else text

    def ids_containing(self, pieces: tuple[str, ...]) -> frozenset[int]:
        """The ids whose text holds any of `pieces`, special tokens included (they end runs too)."""
        texts = self.hf.decode_batch(
            [[i] for i in range(self.vocab_size)], skip_special_tokens=False
        )
        return frozenset(i for i, text in enumerate(texts) if any(p in text for p in pieces))

    def stream(self, skip_special: bool = True) -> StreamDecoder:
        return StreamDecoder(self, skip_special)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Render a chat into a prompt string with the model's own template."""
        if self.chat_template is None:
            raise GenforgeError(
                f"{self.name} has no chat template; use `genforge generate` for raw completion "
                "or pass a model with one."
            )
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            bos_token=self._bos_text,
            eos_token=self._eos_text,
            **extra,
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> list[int]:
        """Render then encode; BOS is prepended only if the template did not write it itself.

        Only the template writes special tokens. Special-token text inside the messages, tools or
        documents (a document quoting "<|im_start|>system") is encoded as the plain text it is, so
        untrusted content cannot open a turn of its own.
        """
        mask = _SpecialTextMask(self._special_text)
        text = self.apply_chat_template(
            mask.hide(messages), add_generation_prompt, mask.hide(tools), **mask.hide(extra)
        )
        wrote_bos = self._bos_text is not None and text.startswith(self._bos_text)
        ids = self._encode_rendered(text, mask)
        return [self.bos_id, *ids] if not wrote_bos and self.add_bos else ids

    @cached_property
    def _special_text(self) -> _SpecialText:
        pieces = {t.content for t in self.hf.get_added_tokens_decoder().values() if t.special}
        return _SpecialText(sorted(pieces))

    @cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(i for i, t in self.hf.get_added_tokens_decoder().items() if t.special)

    @cached_property
    def _plain(self) -> HFTokenizer:
        """A copy of `.hf` that encodes special-token text as ordinary text."""
        plain = HFTokenizer.from_str(self.hf.to_str())
        plain.encode_special_tokens = True
        return plain

    def _encode_rendered(self, text: str, mask: _SpecialTextMask) -> list[int]:
        """Encode a template's output in which the content's special-token text is still hidden.

        Every special token found is the template's own. The text between two of them is kept as
        encoded unless it holds hidden special text: then it is encoded again, shown, as plain text.
        """
        enc = self.hf.encode(text, add_special_tokens=False)
        if not mask.used:
            return enc.ids
        out: list[int] = []
        run: list[int] = []  # ids since the last special token
        start = 0  # where that run's text starts
        for token_id, (a, b) in [
            *zip(enc.ids, enc.offsets, strict=True),
            (None, (len(text), len(text))),
        ]:
            if token_id is not None and token_id not in self._special_ids:
                run.append(token_id)
                continue
            span = text[start:a]
            if mask.hides_text_in(span):
                run = self._plain.encode(mask.show(span), add_special_tokens=False).ids
            out += run if token_id is None else [*run, token_id]
            run, start = [], b
        return out


class _SpecialText:
    """The special tokens' text, found in one pass whatever their number (Gemma has thousands)."""

    def __init__(self, pieces: list[str]):
        self.pieces = [
            *pieces,
            "\ue000",
        ]  # the placeholders' own mark is hidden too: none is forged
        self.index = {piece: i for i, piece in enumerate(self.pieces)}
        self.pattern = re.compile(_trie_pattern(self.pieces))


class _SpecialTextMask:
    """Swaps special-token text in untrusted values for private-use placeholders, and back."""

    def __init__(self, special: _SpecialText):
        self.special = special
        self.used = False

    def hide(self, value: Any) -> Any:
        """`value` (strings, or dicts and lists of them) with every special-token text hidden."""
        if isinstance(value, str):
            if not self.special.pattern.search(value):
                return value
            self.used = True
            index = self.special.index
            return self.special.pattern.sub(lambda m: f"\ue000{index[m[0]]}\ue001", value)
        if isinstance(value, dict):
            return {k: self.hide(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.hide(v) for v in value]
        return value

    @staticmethod
    def hides_text_in(text: str) -> bool:
        return _PLACEHOLDER.search(text) is not None

    def show(self, text: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self.special.pieces[int(m[1])], text)


_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def _trie_pattern(words: list[str]) -> str:
    """A regex matching any of `words`, longest first, shaped as a trie: an alternation of
    thousands of words would be tried word by word at every "<" of a long text."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def build(node: dict) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in node.items() if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


class StreamDecoder:
    """Decodes ids one at a time, holding back text until a multi-byte character is complete.

    Each step decodes a short window (the previously emitted ids as context, plus the new ones) and
    emits what the new ids added, so the joined output equals `decode(all_ids)` while the cost per
    step stays constant. Context matters because decoders are not per-token: byte-level pieces
    join into characters, and SentencePiece decoders strip a leading space only at the start.
    """

    MAX_PENDING = 8  # a valid character needs at most 4 byte tokens; beyond this, emit the U+FFFD

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window: ids already emitted last time
        self._read = 0  # every id before this has been emitted as text

    def step(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a character is unfinished)."""
        self._ids.append(token_id)
        before, after = self._window()
        pending = len(self._ids) - self._read
        if len(after) <= len(before) or (after.endswith("\ufffd") and pending < self.MAX_PENDING):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Return whatever is still held back (an unfinished character decodes to U+FFFD)."""
        before, after = self._window()
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]

    def _window(self) -> tuple[str, str]:
        decode, ids = self._tokenizer.decode, self._ids
        before = decode(ids[self._prefix : self._read], self._skip_special)
        return before, decode(ids[self._prefix :], self._skip_special)


def _turn_end_ids(hf: HFTokenizer) -> frozenset[int]:
    """Ids of special tokens that end a turn (see TURN_END_PIECES)."""
    return frozenset(
        i
        for i, added in hf.get_added_tokens_decoder().items()
        if added.special and added.content in TURN_END_PIECES
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GenforgeError(f"{path} is not valid JSON ({e}); restore it from the model.") from None


def _token_id(hf: HFTokenizer, token: str | dict[str, Any] | None) -> int | None:
    """Id of a config's special token, written as a string or as a serialized AddedToken."""
    if isinstance(token, dict):
        token = token.get("content")
    return hf.token_to_id(token) if token else None


def _dir_chat_template(path: Path, config: dict[str, Any]) -> str | None:
    """The template from chat_template.jinja (newer HF layout) or tokenizer_config.json."""
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template
