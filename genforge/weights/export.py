"""Write a genforge model as a Hugging Face folder or as a GGUF file.

The folder (safetensors + config.json + tokenizer files) loads with transformers'
`AutoModelForCausalLM` / `AutoTokenizer`; the GGUF file loads in llama.cpp; both load with genforge's
own loader. The tensor names come from the same declarative maps the loader reads (`HF_NAMES`,
`GGUF_NAMES`), inverted, and the GGUF transforms (llama's Q/K row permutation) are undone by their
inverses. Everything is written under a hidden temporary name that is renamed into place last, so a
reader never sees half a model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genforge.errors import GenforgeError
from genforge.model.config import ModelConfig
from genforge.tokenizer import Tokenizer
from genforge.weights.configs import FAMILY_FLAGS
from genforge.weights.names import GGUF_NAMES, GGUF_TRANSFORMS, HF_NAMES, expand, pattern_of

# genforge arch -> (HF model_type, HF architectures entry)
_HF_CLASS = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

# Weight precision -> (GGML tensor type, `general.file_type`), as named in the gguf package.
GGUF_DTYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
}
# llama.cpp's name for GPT-2's split regex, the one `genforge tokenizer train` uses.
GGUF_PRE_TOKENIZER = "gpt-2"


def hf_config(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None) -> dict:
    """The `config.json` transformers needs to rebuild `cfg` (llama and qwen2 families)."""
    _check_family(cfg, "Hugging Face class")
    model_type, cls = _HF_CLASS[cfg.arch]
    out = {
        "architectures": [cls],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.qkv_bias,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    if bos_id is not None:
        out["bos_token_id"] = bos_id
    if eos_id is not None:
        out["eos_token_id"] = eos_id
    return out


def _check_family(cfg: ModelConfig, target: str) -> None:
    """Only llama and qwen2 models whose flags are exactly their family's can be written."""
    if cfg.arch not in _HF_CLASS:
        raise GenforgeError(f"exporting {cfg.arch} models is not supported; llama and qwen2 are.")
    keys = {k for family in FAMILY_FLAGS.values() for k in family}  # every flag a family may set
    flags = {k: getattr(cfg, k) for k in keys}
    expected = {k: getattr(ModelConfig(), k) for k in keys} | FAMILY_FLAGS[cfg.arch]
    if flags != expected:
        raise GenforgeError(f"this {cfg.arch} model has flags its {target} cannot express.")


def hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """genforge parameter names -> Hugging Face names (contiguous tensors, tied output dropped)."""
    inverse = {dst: src for src, dst in expand(HF_NAMES[cfg.arch], cfg.n_layers).items()}
    out = {}
    for name, t in state.items():
        if name == "output.weight" and cfg.tie_embeddings:
            continue
        if name not in inverse:
            raise GenforgeError(
                f"no Hugging Face name for parameter {name!r} of a {cfg.arch} model."
            )
        out[inverse[name]] = t.detach().contiguous()
    return out


def genforge_state(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face names -> genforge parameter names (the inverse of `hf_state`)."""
    names = expand(HF_NAMES[cfg.arch], cfg.n_layers)
    return {names[k]: v for k, v in hf.items()}


def write_hf(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    tokenizer_dir: str | Path,
    out: str | Path,
    dtype: torch.dtype = torch.float32,
    extra: dict[str, Callable[[Path], object]] | None = None,
) -> Path:
    """Write a Hugging Face model folder at `out` atomically (temp folder, then rename).

    `extra` maps more file names to functions that write them (e.g. training state next to the
    weights); an existing `out` is replaced only once the new folder is complete.
    """
    with atomic_folder(out) as tmp:
        write_hf_files(state, cfg, tokenizer_dir, tmp, dtype)
        for name, write in (extra or {}).items():
            write(tmp / name)
    return Path(out)


def write_hf_files(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    tokenizer_dir: str | Path,
    folder: Path,
    dtype: torch.dtype = torch.float32,
) -> None:
    """The files of a Hugging Face model folder, written into the existing `folder`."""
    from safetensors.torch import save_file

    tokenizer_dir = Path(tokenizer_dir)
    tok = Tokenizer.from_dir(tokenizer_dir)
    eos = _eos_id(tokenizer_dir, tok)
    tensors = {k: v.to(dtype) for k, v in hf_state(state, cfg).items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = hf_config(cfg, tok.bos_id, eos) | {"torch_dtype": str(dtype).removeprefix("torch.")}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": tok.bos_id, "eos_token_id": eos}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    copy_tokenizer(tokenizer_dir, folder)


def copy_tokenizer(tokenizer_dir: Path, folder: Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy2(Path(tokenizer_dir) / name, folder / name)


@contextlib.contextmanager
def atomic_folder(out: str | Path):
    """Yield a hidden temporary folder; once the block ends without an error, it is synced to disk
    and renamed to `out` (an existing `out` stays whole until then), so a kill at any moment leaves
    either the old folder or the new one."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    # safetensors writes its file with mode 0600 and copy2 keeps a source's mode: give every file
    # the mode a new file gets (0o666 less the umask), shown by `tmp`, just made with 0o777 less it.
    mode = tmp.stat().st_mode & 0o666
    for f in tmp.rglob("*"):
        if f.is_file():
            f.chmod(mode)
    _fsync_dir(tmp)
    if out.exists():  # swap: the old folder stays whole until the new one is in place
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _eos_id(tokenizer_dir: Path, tok) -> int | None:
    """The id of the tokenizer config's `eos_token` (the document separator), if it names one."""
    try:
        eos = json.loads((tokenizer_dir / "tokenizer_config.json").read_text()).get("eos_token")
    except (OSError, json.JSONDecodeError):
        return None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return tok.hf.token_to_id(eos) if eos else None


def _fsync_dir(folder: Path) -> None:
    """Sync the folder's files, its subfolders (a model folder may have some), then itself."""
    for f in folder.iterdir():
        if f.is_dir():
            _fsync_dir(f)
            continue
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_gguf(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    tokenizer_dir: str | Path,
    out: str | Path,
    dtype: str = "f32",
    name: str | None = None,
) -> Path:
    """Write a GGUF file at `out` atomically (temp file, then rename) that llama.cpp loads.

    Matrices are stored in `dtype` ("f32", "f16" or "bf16"); norms and biases stay f32, as
    llama.cpp's own converter keeps them. `name` is `general.name` (default: the file's stem).
    """
    import gguf

    _check_family(cfg, "GGUF architecture")
    if dtype not in GGUF_DTYPES:
        raise GenforgeError(
            f"the GGUF dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}."
        )
    if cfg.rope_scaling is not None and cfg.rope_scaling.get("rope_type") != "linear":
        raise GenforgeError(
            f"{cfg.rope_scaling.get('rope_type')!r} RoPE scaling cannot be written to GGUF; "
            "export to a Hugging Face folder instead."
        )
    out, tokenizer_dir = Path(out), Path(tokenizer_dir)
    tensor_type = gguf.GGMLQuantizationType[GGUF_DTYPES[dtype][0]]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = gguf.GGUFWriter(tmp, cfg.arch)
    try:
        _add_hparams(writer, cfg, name or out.stem, gguf.LlamaFileType[GGUF_DTYPES[dtype][1]])
        _add_vocab(writer, tokenizer_dir, cfg.vocab_size)
        for gguf_name, w in gguf_tensors(state, cfg).items():
            if w.ndim == 1:  # norms and biases
                writer.add_tensor(gguf_name, w)
            else:
                w = gguf.quants.quantize(w, tensor_type)
                writer.add_tensor(gguf_name, w, raw_dtype=tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rotate-half Q/K rows -> llama.cpp's interleaved rotary layout (undone by load's `_unpermute`)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """genforge parameters -> GGUF names and layouts, float32 (tied output dropped)."""
    inverse = {dst: src for src, dst in expand(GGUF_NAMES[cfg.arch], cfg.n_layers).items()}
    undo = {  # the inverse of each of the loader's GGUF transforms
        "unpermute_q": lambda w: permute_rotary(w, cfg.n_heads),
        "unpermute_k": lambda w: permute_rotary(w, cfg.n_kv_heads),
        "minus_one": lambda w: w + 1.0,
    }
    transforms = GGUF_TRANSFORMS.get(cfg.arch, {})
    out = {}
    for name, t in state.items():
        if name == "output.weight" and cfg.tie_embeddings:
            continue
        if name not in inverse:
            raise GenforgeError(f"no GGUF name for parameter {name!r} of a {cfg.arch} model.")
        w = t.detach().to("cpu", torch.float32).numpy()
        if (transform := transforms.get(pattern_of(name))) is not None:
            w = undo[transform](w)
        out[inverse[name]] = np.ascontiguousarray(w)
    return out


def _add_hparams(writer, cfg: ModelConfig, name: str, file_type: int) -> None:
    """The `{arch}.*` keys llama.cpp reads to rebuild `cfg`."""
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    if cfg.rope_scaling is not None:  # linear, checked by the caller
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))


def _add_vocab(writer, tokenizer_dir: Path, vocab_size: int) -> None:
    """llama.cpp's description of a byte-level BPE tokenizer folder (`tokenizer.ggml.*`)."""
    from gguf import TokenType

    tok = Tokenizer.from_dir(tokenizer_dir)
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    _check_byte_level(spec, tokenizer_dir)
    if tok.vocab_size > vocab_size:
        raise GenforgeError(
            f"the tokenizer in {tokenizer_dir} has {tok.vocab_size} tokens but the model only "
            f"{vocab_size}; export with the tokenizer the model was trained with."
        )
    added = tok.hf.get_added_tokens_decoder()
    kinds = {None: TokenType.NORMAL, True: TokenType.CONTROL, False: TokenType.USER_DEFINED}
    tokens, types = [], []
    for i in range(vocab_size):
        piece = tok.hf.id_to_token(i)
        if piece is None:  # embedding rows beyond the tokenizer (a padded vocabulary)
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(piece)
            types.append(kinds[added[i].special if i in added else None])
    # Newer tokenizer.json files store merges as pairs, older ones as "a b" strings.
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = _eos_id(tokenizer_dir, tok)
    # Without a BOS id llama.cpp gives a gpt2 vocabulary id 11 as BOS; GPT-2's own convention
    # (BOS = EOS = <|endoftext|>) is the harmless choice, and add_bos_token keeps it unused.
    bos = tok.bos_id if tok.bos_id is not None else eos
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    writer.add_add_bos_token(tok.add_bos)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def _check_byte_level(spec: dict, tokenizer_dir: Path) -> None:
    """GGUF names a pre-tokenizer rather than describing it; only GPT-2's byte-level split maps."""
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if (
        model.get("type") != "BPE"
        or spec.get("normalizer")
        or pre.get("type") != "ByteLevel"
        or pre.get("add_prefix_space")
        or not pre.get("use_regex", True)
    ):
        raise GenforgeError(
            f"the tokenizer in {tokenizer_dir} is not a plain byte-level BPE with GPT-2's split "
            "(as `genforge tokenizer train` makes); export to a Hugging Face folder instead."
        )
