"""LoRA adapters in peft's files: `adapter_config.json` + `adapter_model.safetensors`.

The folder `peft.PeftModel.from_pretrained` loads on the transformers model: tensors named
`base_model.model.<HF module>.lora_A.weight` (rank x in) and `.lora_B.weight` (out x rank), the HF
module names coming from the same declarative map the model loader reads (`HF_NAMES`). genforge reads
such folders back (its own, or ones peft wrote) as `{"layers.3.attn.wq.lora_a": ...}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from genforge.errors import GenforgeError
from genforge.model.config import ModelConfig
from genforge.weights.names import HF_NAMES, expand

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


@dataclass
class AdapterConfig:
    rank: int
    alpha: float  # peft's lora_alpha: the adapter adds (alpha / rank) * B A x
    targets: tuple[str, ...]  # Hugging Face module names (q_proj, ...)
    dropout: float = 0.0
    base_model: str = ""  # what it was trained on, for the record


def module_names(cfg: ModelConfig) -> dict[str, str]:
    """genforge module name (layers.3.attn.wq) -> Hugging Face module name
    (model.layers.3.self_attn.q_proj), for the linear layers of every block."""
    out = {}
    for hf, ours in expand(HF_NAMES[cfg.arch], cfg.n_layers).items():
        if ours.startswith("layers.") and ours.endswith(".weight") and hf.endswith("_proj.weight"):
            out[ours.removesuffix(".weight")] = hf.removesuffix(".weight")
    return out


def hf_target(genforge_leaf: str, cfg: ModelConfig) -> str:
    """'wq' -> 'q_proj'."""
    for ours, hf in module_names(cfg).items():
        if ours.rpartition(".")[2] == genforge_leaf:
            return hf.rpartition(".")[2]
    raise GenforgeError(f"a {cfg.arch} model has no layer {genforge_leaf!r} to adapt.")


def write_adapter(
    folder: Path, state: dict[str, torch.Tensor], cfg: ModelConfig, adapter: AdapterConfig
) -> None:
    """Write `state` (genforge names, `genforge.model.lora.lora_state`) into the existing `folder`."""
    from safetensors.torch import save_file

    names = module_names(cfg)
    tensors = {}
    for key, t in state.items():
        module, _, part = key.rpartition(".")
        suffix = {"lora_a": "lora_A", "lora_b": "lora_B"}[part]
        tensors[f"{PREFIX}{names[module]}.{suffix}.weight"] = t.detach().float().contiguous()
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": adapter.base_model or None,
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": adapter.dropout,
        "target_modules": sorted(adapter.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
        "revision": None,
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=2))


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def read_adapter(folder: str | Path, cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], float]:
    """(tensors with genforge names, alpha such that each layer adds (alpha / rank) B A x) of the
    peft LoRA folder `folder`, checked against the model `cfg` it is to go on."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenforgeError(
            f"{folder} is not an adapter folder ({CONFIG}: {e}); give the folder "
            "`genforge finetune` (or peft) wrote."
        ) from None
    if config.get("peft_type") != "LORA":
        raise GenforgeError(f"{folder} holds a {config.get('peft_type')} adapter; only LoRA loads.")
    for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if config.get(key):
            raise GenforgeError(f"{folder} uses peft's {key}, which genforge does not load.")
    if config.get("bias", "none") != "none":
        raise GenforgeError(f"{folder} trains biases (bias={config['bias']}); genforge loads none.")
    try:
        rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    except (KeyError, TypeError, ValueError):
        raise GenforgeError(f"{folder / CONFIG} has no valid rank r and lora_alpha.") from None
    if config.get("use_rslora"):
        alpha = alpha * rank**0.5  # rsLoRA scales by alpha / sqrt(rank)
    path = folder / WEIGHTS
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise GenforgeError(f"{path} cannot be read ({e}).") from None
    ours = {hf: g for g, hf in module_names(cfg).items()}
    state = {}
    for key, t in tensors.items():
        name = key.removeprefix(PREFIX)
        for part, suffix in (("lora_A", "lora_a"), ("lora_B", "lora_b")):  # noqa: B007
            module = name.removesuffix(f".{part}.weight").removesuffix(f".{part}.default.weight")
            if module != name:
                break
        else:
            raise GenforgeError(f"{path} has a tensor {key!r} that is not a LoRA weight.")
        if module not in ours:
            raise GenforgeError(
                f"{path} adapts {module}, which this {cfg.arch} model of {cfg.n_layers} layers "
                "does not have; use the adapter with the model it was trained on."
            )
        state[f"{ours[module]}.{suffix}"] = t.float()
    _check_shapes(state, cfg, path, rank)
    return state, alpha


def _check_shapes(state: dict[str, torch.Tensor], cfg: ModelConfig, path: Path, rank: int) -> None:
    """Every adapted layer has A (rank, in) and B (out, rank) of the config's rank and the model's
    sizes; else one sentence, not an error from deep inside torch."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    sizes = {
        "wq": (cfg.dim, q),
        "wk": (cfg.dim, kv),
        "wv": (cfg.dim, kv),
        "wo": (q, cfg.dim),
        "w_gate": (cfg.dim, cfg.hidden_dim),
        "w_up": (cfg.dim, cfg.hidden_dim),
        "w_down": (cfg.hidden_dim, cfg.dim),
    }
    modules = {key.rpartition(".")[0] for key in state}
    for module in sorted(modules):
        a, b = state.get(f"{module}.lora_a"), state.get(f"{module}.lora_b")
        n_in, n_out = sizes[module.rpartition(".")[2]]
        if a is None or b is None:
            problem = "has only one of its two LoRA matrices"
        elif (tuple(a.shape), tuple(b.shape)) != ((rank, n_in), (n_out, rank)):
            problem = (
                f"has A {tuple(a.shape)} and B {tuple(b.shape)} where rank {rank} on this model "
                f"needs {(rank, n_in)} and {(n_out, rank)}"
            )
        else:
            continue
        raise GenforgeError(
            f"{path}: the adapter of {module} {problem}; use the adapter with the model it was "
            "trained on."
        )
