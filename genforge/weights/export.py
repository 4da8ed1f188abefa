"""Write a genforge model as a Hugging Face folder (safetensors + config.json + tokenizer files).

The folder loads with transformers' `AutoModelForCausalLM` / `AutoTokenizer` and with genforge's own
loader: the tensor names come from the same declarative maps the loader reads (`HF_NAMES`),
inverted. Every file is written into a hidden temporary folder that is renamed into place last, so a
reader never sees half a model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from genforge.errors import GenforgeError
from genforge.model.config import ModelConfig
from genforge.weights.configs import FAMILY_FLAGS
from genforge.weights.names import HF_NAMES, expand

# genforge arch -> (HF model_type, HF architectures entry)
_HF_CLASS = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def hf_config(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None) -> dict:
    """The `config.json` transformers needs to rebuild `cfg` (llama and qwen2 families)."""
    if cfg.arch not in _HF_CLASS:
        raise GenforgeError(f"exporting {cfg.arch} models is not supported; llama and qwen2 are.")
    keys = {k for family in FAMILY_FLAGS.values() for k in family}  # every flag a family may set
    flags = {k: getattr(cfg, k) for k in keys}
    expected = {k: getattr(ModelConfig(), k) for k in keys} | FAMILY_FLAGS[cfg.arch]
    if flags != expected:
        raise GenforgeError(
            f"this {cfg.arch} model has flags its Hugging Face class cannot express."
        )
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
    state: dict[str, torch.Tensor], cfg: ModelConfig, tokenizer_dir: str | Path, out: str | Path,
    dtype: torch.dtype = torch.float32, extra: dict[str, Callable[[Path], object]] | None = None,
) -> Path:  # fmt: skip
    """Write a Hugging Face model folder at `out` atomically (temp folder, then rename).

    `extra` maps more file names to functions that write them (e.g. training state next to the
    weights); an existing `out` is
    replaced only once the new folder is complete.
    """
    from safetensors.torch import save_file

    from genforge.tokenizer import Tokenizer

    out, tokenizer_dir = Path(out), Path(tokenizer_dir)
    tok = Tokenizer.from_dir(tokenizer_dir)
    eos = _eos_id(tokenizer_dir, tok)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.to(dtype) for k, v in hf_state(state, cfg).items()}
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    config = hf_config(cfg, tok.bos_id, eos) | {"torch_dtype": str(dtype).removeprefix("torch.")}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"bos_token_id": tok.bos_id, "eos_token_id": eos}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, tmp / name)
    for name, write in (extra or {}).items():
        write(tmp / name)
    _fsync_dir(tmp)
    if out.exists():  # swap: the old folder stays whole until the new one is in place
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)
    return out


def _eos_id(tokenizer_dir: Path, tok) -> int | None:
    """The id of the tokenizer config's `eos_token` (the document separator), if it names one."""
    try:
        eos = json.loads((tokenizer_dir / "tokenizer_config.json").read_text()).get("eos_token")
    except (OSError, json.JSONDecodeError):
        return None
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return tok.hf.token_to_id(eos) if eos else None


def _fsync_dir(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
