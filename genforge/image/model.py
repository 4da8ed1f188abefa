"""The text-to-image network: a caption tokenizer, a small text encoder that keeps a state per word,
and diffusers' `UNet2DConditionModel` whose cross-attention reads those states.

Why these parts:
- The UNet is diffusers' own, in pixel space (at 32x32 there is nothing for a VAE to save) with
  each 2x2 patch folded into channels (`patch`: a 32x32 RGB picture is 16x16 by 12 to the UNet),
  which makes a training step about 4x cheaper on a CPU at no visible cost for 8-pixel shapes. A UNet's
  convolutions learn small pictures from few examples much faster than a transformer over patches
  (a DiT needs far more steps at this size, on a CPU that has few to give), its cross-attention is
  what binds "red" to "circle", and a run's `unet/` folder is a diffusers model that diffusers'
  own pipelines load as it is.
- No pretrained text encoder installs offline, so the encoder trains with the UNet: a word-level
  vocabulary read from the training captions (`tokenizers`' WordLevel; unseen words are [UNK] and
  `unknown_words` names them), then a pre-norm transformer whose per-word outputs are the UNet's
  `encoder_hidden_states`. Pooling a caption into one vector would lose which colour goes with
  which shape; attention over word states keeps it. Every caption starts with [BOS], so the empty
  caption (classifier-free guidance's unconditional input) still has one state to attend to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from genforge.errors import GenforgeError

CONFIG = "genforge_image.json"
TOKENIZER = "tokenizer.json"
TEXT_ENCODER = "text_encoder.safetensors"
UNET = "unet"
SPECIALS = ("[PAD]", "[UNK]", "[BOS]")
PAD, UNK, BOS = 0, 1, 2


@dataclass
class ImageConfig:
    """What a text-to-image model is: its pictures, its UNet, its text encoder, its noise."""

    size: int = 32  # the UNet's square input, in pixels
    channels: int = 3  # 3 colour, 1 grey
    patch: int = 2  # pixels per side folded into the UNet's channels
    crop: int = 0  # pictures are this size (padded to `size` for the UNet); 0 = `size`
    widths: tuple[int, ...] = (64, 128, 128)  # UNet channels per resolution (halved after each)
    attention: tuple[bool, ...] = (False, True, True)  # cross-attention at each resolution
    pooled: bool = False  # the caption's mean state also joins the timestep embedding
    layers_per_block: int = 1
    heads: int = 4  # attention heads in the UNet and the text encoder
    text_dim: int = 128
    text_layers: int = 2
    max_words: int = 24  # caption tokens kept, [BOS] included
    vocab: int = 0  # set from the tokenizer
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # the cosine schedule: suited to small pictures
    prediction: str = "epsilon"
    sample_prompts: list[str] = field(default_factory=list)  # the training grid's prompts
    source: str = ""  # what it was trained on: mnist, shapes, or a folder

    def __post_init__(self):
        self.widths, self.attention = tuple(self.widths), tuple(self.attention)

    @property
    def out_size(self) -> int:
        return self.crop or self.size

    def check(self) -> None:
        if len(self.widths) != len(self.attention) or not self.widths:
            raise GenforgeError(
                "give one --widths entry per UNet resolution, and one attention flag each."
            )
        step = self.patch * 2 ** (len(self.widths) - 1)
        if self.size % step:
            raise GenforgeError(
                f"--size {self.size} must be divisible by {step} (2x2 patches, then the UNet "
                f"halves it {len(self.widths) - 1} times)."
            )
        if any(w % 16 or w % self.heads for w in self.widths) or self.text_dim % self.heads:
            raise GenforgeError(
                f"every UNet width must be a multiple of 16 (group norm) and of --heads {self.heads}, "
                f"and so must the text width; got widths {list(self.widths)}, text {self.text_dim}."
            )


# -- captions ---------------------------------------------------------------------------------------


def train_tokenizer(captions: list[str], max_vocab: int = 4096):
    """A word-level tokenizer (lower case, words and punctuation) over the training captions."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab, special_tokens=list(SPECIALS), show_progress=False
    )
    tok.train_from_iterator(captions, trainer)
    return tok


def encode_captions(
    tokenizer, captions: list[str], max_words: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, max_words), mask (B, max_words) True on words): [BOS] then the caption's words."""
    ids = torch.full((len(captions), max_words), PAD, dtype=torch.long)
    for row, enc in enumerate(tokenizer.encode_batch(captions, add_special_tokens=False)):
        words = [BOS, *enc.ids][:max_words]
        ids[row, : len(words)] = torch.tensor(words)
    return ids, ids != PAD


def unknown_words(tokenizer, caption: str) -> list[str]:
    """The words of `caption` the model was never trained on (they reach it as [UNK])."""
    enc = tokenizer.encode(caption, add_special_tokens=False)
    return [caption[a:b] for i, (a, b) in zip(enc.ids, enc.offsets, strict=True) if i == UNK]


class TextEncoder(nn.Module):
    """Word embeddings and positions, a few pre-norm transformer layers, a final norm: one state
    per caption token, the keys and values of the UNet's cross-attention."""

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        d = cfg.text_dim
        self.embed = nn.Embedding(cfg.vocab, d)
        self.pos = nn.Parameter(torch.randn(cfg.max_words, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, cfg.heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        return self.norm(self.blocks(x, src_key_padding_mask=~mask))


def build_unet(cfg: ImageConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.size // cfg.patch,
        in_channels=cfg.channels * cfg.patch**2,
        out_channels=cfg.channels * cfg.patch**2,
        down_block_types=tuple(
            "CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention
        ),
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)
        ),
        block_out_channels=cfg.widths,
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=16,
        cross_attention_dim=cfg.text_dim,
        attention_head_dim=cfg.heads,  # diffusers' name for the number of heads in this class
        # the pooled caption, projected and added to the timestep embedding (Imagen's "pooled
        # embedding vector"): every ResNet block, not only the attention levels, hears the caption
        class_embed_type="projection" if cfg.pooled else None,
        projection_class_embeddings_input_dim=cfg.text_dim if cfg.pooled else None,
    )


class TextToImage(nn.Module):
    """The trained pair: `forward(noisy, t, ids, mask)` is the UNet's noise prediction for `noisy`
    (pictures folded by `pack`) at timesteps `t`, conditioned on the captions' word states.
    Diffusion runs in the folded space; folding is a permutation of pixels, so Gaussian noise
    there is Gaussian noise on the picture."""

    def __init__(self, cfg: ImageConfig):
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.text = TextEncoder(cfg)
        self.unet = build_unet(cfg)

    def pack(self, pictures: torch.Tensor) -> torch.Tensor:
        """(N, C, size, size) -> (N, C x patch^2, size / patch, size / patch)."""
        return nn.functional.pixel_unshuffle(pictures, self.cfg.patch)

    def unpack(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(z, self.cfg.patch)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.cfg
        return (c.channels * c.patch**2, c.size // c.patch, c.size // c.patch)

    def condition(self, ids: torch.Tensor, mask: torch.Tensor, masked: bool = True) -> dict:
        """The UNet's caption arguments: word states (and their mean, for a pooled model);
        masked=False leaves out the attention mask (for captions without padding)."""
        states = self.text(ids, mask)
        out = {"encoder_hidden_states": states, "encoder_attention_mask": mask if masked else None}
        if self.cfg.pooled:
            weights = mask.unsqueeze(-1).to(states.dtype)
            out["class_labels"] = (states * weights).sum(1) / weights.sum(1)
        return out

    def forward(self, noisy, t, ids, mask) -> torch.Tensor:
        return self.unet(noisy, t, **self.condition(ids, mask)).sample


def noise_scheduler(cfg: ImageConfig):
    """The training noise schedule (diffusers' DDPM); samplers are made from its config."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction,
        clip_sample=False,
    )


# -- files -----------------------------------------------------------------------------------------


def save(model: TextToImage, tokenizer, folder: Path, dtype: torch.dtype = torch.float32) -> None:
    """A model folder: `unet/` (a diffusers model folder), `text_encoder.safetensors`,
    `tokenizer.json`, `scheduler/` and `genforge_image.json`; `dtype` float16 halves a shipped one."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    unet = model.unet
    if dtype != torch.float32:
        unet = build_unet(model.cfg)
        unet.load_state_dict(model.unet.state_dict())
        unet.to(dtype)
    unet.save_pretrained(folder / UNET, safe_serialization=True)
    text = {k: v.detach().to(dtype).contiguous() for k, v in model.text.state_dict().items()}
    save_file(text, folder / TEXT_ENCODER)
    tokenizer.save(str(folder / TOKENIZER))
    noise_scheduler(model.cfg).save_pretrained(folder / "scheduler")
    (folder / CONFIG).write_text(json.dumps(asdict(model.cfg), indent=2) + "\n")


def is_image_model(folder: Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def load(folder: str | Path) -> tuple[TextToImage, object]:
    """(model in fp32, eval mode; tokenizer) from a folder `save` wrote."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    folder = Path(folder)
    try:
        cfg = ImageConfig(**json.loads((folder / CONFIG).read_text()))
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        model = TextToImage(cfg)
        unet = UNet2DConditionModel.from_pretrained(folder / UNET, torch_dtype=torch.float32)
        model.unet.load_state_dict(unet.state_dict())
        text = load_file(folder / TEXT_ENCODER)
        model.text.load_state_dict({k: v.float() for k, v in text.items()})
    except GenforgeError:
        raise
    except Exception as e:  # a damaged or partial folder: say which, not a library traceback
        raise GenforgeError(
            f"{folder} is not a readable genforge image model ({type(e).__name__}: {e})."
        ) from None
    return model.eval(), tokenizer
