"""The one configuration type of the project: model, data, training and evaluation settings.

A configuration is a tree of dataclasses. It is read from YAML (a file may name a ``base`` file
whose settings it extends) and overridden from the command line as ``key.sub=value``, where the
value is parsed as YAML (``true``, ``8``, ``1e-5``, ``null``). Unknown keys and values of the
wrong type are refused with an error that names the key and the file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from mmnet.errors import MMNetError


class ConfigError(MMNetError, ValueError):
    """A configuration file or override that cannot be used as it is."""


MASK_SUMS = ("probability", "logit")
INITS = ("he", "pytorch")
QUERY_LOSSES = ("none", "all", "best")
PRECISIONS = ("auto", "fp32", "bf16")
TARGET_RESIZES = ("area", "nearest")
PAPER_BACKBONES = ("RN50", "RN101", "ViT-B-16", "ViT-L-14")
TINY_BACKBONES = ("RN-tiny", "ViT-tiny")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


@dataclass
class ModelConfig:
    backbone: str = "RN50"
    """CLIP tower by open_clip name: RN50, RN101, ViT-B-16, ViT-L-14, or the tiny RN-tiny, ViT-tiny."""
    clip_weights: Optional[str] = None
    """Pretrained CLIP weights: a local file (OpenAI TorchScript .pt, open_clip .pt/.bin/.safetensors)
    or an open_clip pretrained tag such as ``openai`` (downloads). None keeps random weights."""
    quick_gelu: bool = True
    """QuickGELU activations in the CLIP towers; OpenAI's weights were trained with it."""
    image_size: int = 480
    """Side of the square network input; the model is built for this one size (W_vd, Eq. 9)."""
    context_length: int = 17
    """L, tokens per expression with [SOS] and [EOS]: 17 for RefCOCO/RefCOCO+, 22 for G-Ref."""
    hidden_dim: int = 512
    """C, the width of the fusion neck, query generator, decoder and heads."""
    num_heads: int = 8
    ffn_dim: int = 2048
    decoder_layers: int = 3
    dropout: float = 0.1
    num_queries: int = 24
    """N_q, the number of generated queries and masks (Table 2)."""
    multi_mask: bool = True
    """Off: the scores weight the queries into one query that makes one mask (Table 3, w/o MMP)."""
    estimator: bool = True
    """Off: the masks are averaged with equal weights (Table 4, w/o MQE)."""
    global_visual: bool = True
    """Off: F_t stands where F_tv would be, without the global visual feature (Table 4, w/o f_vg)."""
    mask_sum: str = "probability"
    """Eq. 16 over ``probability`` (y = sum_n S_n sigmoid(mask_n)) or ``logit`` (y = sigmoid(sum_n S_n
    mask_n), which is one dynamic convolution with a mixed kernel: docs/model.md)."""
    word_logit_scale: Optional[float] = 10.0
    """Eq. 9 as a cosine similarity times a learnable temperature that starts here; None keeps the
    paper's plain product, whose logits barely vary across words at initialisation."""
    estimator_residual: bool = True
    """S_q = softmax(W_s (F_q + MHSA(F_q))): each score sees its own query, not only the
    attention's mixture of all of them. Off is Eq. 15 as written."""
    init: str = "he"
    """Initialisation of the query generator, projector and estimator: ``he`` (docs/model.md) or
    ``pytorch`` (the layers' own defaults)."""
    no_target: bool = False
    """A head that says whether the expression refers to nothing in the image (generalized
    referring segmentation, gRefCOCO; beyond the paper: docs/model.md, "Extensions"). Off, the
    model is the paper's single-target MMNet and has no such weights."""

    def validate(self) -> None:
        for name in ("image_size", "hidden_dim", "num_heads", "ffn_dim", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.num_queries < 1:
            raise ConfigError(f"model.num_queries must be at least 1, got {self.num_queries}")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(
                f"model.hidden_dim ({self.hidden_dim}) must be a multiple of model.num_heads ({self.num_heads})"
            )
        if self.hidden_dim % 4:
            raise ConfigError(f"model.hidden_dim must be a multiple of 4, got {self.hidden_dim}")
        if self.context_length < 2:
            raise ConfigError(f"model.context_length must hold [SOS] and [EOS], got {self.context_length}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        _check_choice("model.mask_sum", self.mask_sum, MASK_SUMS)
        _check_choice("model.init", self.init, INITS)
        if self.word_logit_scale is not None and not self.word_logit_scale > 0:
            raise ConfigError(f"model.word_logit_scale must be above 0 or null, got {self.word_logit_scale}")
        self._validate_backbone()

    def _validate_backbone(self) -> None:
        """The backbone is an open_clip CLIP whose towers MMNet uses, and the image size fits its grid."""
        from mmnet.backbones import clip_model_config  # open_clip imports torch: only when a config is checked

        clip = clip_model_config(self.backbone)
        if clip is None:
            raise ConfigError(
                f"unknown model.backbone '{self.backbone}'; the paper's are {', '.join(PAPER_BACKBONES)}, "
                f"the small ones {', '.join(TINY_BACKBONES)}"
            )
        vision, text = clip["vision_cfg"], clip["text_cfg"]
        own_text = not (clip.get("custom_text") or "hf_model_name" in text or "hf_tokenizer_name" in text)
        if not own_text or text.get("pool_type", "argmax") != "argmax" or text.get("no_causal_mask"):
            raise ConfigError(
                f"model.backbone={self.backbone}: MMNet's text encoder needs CLIP's own text transformer "
                "(CLIP's BPE tokens, a causal mask, pooled at [EOS])"
            )
        if "timm_model_name" in vision:
            raise ConfigError(
                f"model.backbone={self.backbone} has a timm image tower; MMNet uses open_clip's own ResNets and ViTs"
            )
        if isinstance(vision["layers"], (list, tuple)):
            if self.image_size % 32:
                raise ConfigError(f"model.image_size={self.image_size} must be a multiple of 32 for {self.backbone}")
            return
        if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
            raise ConfigError(f"model.backbone={self.backbone}: only ViTs pooled by their class token are supported")
        patch = vision["patch_size"]
        if self.image_size % (2 * patch):
            raise ConfigError(
                f"model.image_size={self.image_size} must be a multiple of {2 * patch} for {self.backbone} "
                f"(patch {patch}, and the stride-32 scale halves the grid); ViT-L-14 uses 476"
            )


@dataclass
class DataConfig:
    root: str = "data"
    """Folder in the `refer` layout: <root>/<dataset>/refs(<split_by>).p, <root>/<dataset>/instances.json."""
    dataset: str = "refcoco"
    """refcoco, refcoco+, refcocog, or the folder name of a synthetic set under root."""
    split_by: str = "unc"
    """unc for RefCOCO/RefCOCO+, umd or google for G-Ref."""
    image_dir: Optional[str] = None
    """Images; None means <root>/images/train2014."""
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 4
    cache_dir: Optional[str] = None
    """Where the parsed index is cached; None means <root>/<dataset>/cache."""
    text_blind: bool = False
    """Replace every expression with an empty one: a control showing what images alone give."""


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    """Samples per optimizer step over all processes; gradients accumulate to reach it."""
    micro_batch_size: Optional[int] = None
    """Samples per forward pass in one process; None means batch_size / world size."""
    lr: float = 1e-5
    backbone_lr_mult: float = 1.0
    lr_power: float = 0.9
    """Exponent of the polynomial decay of the learning rate."""
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    """Clip the gradient norm to this value; 0 disables clipping."""
    query_loss: str = "best"
    """Supervision of each query's own mask beside the BCE on y: ``best`` adds the BCE of the best
    query's mask (multiple-choice learning) and trains the estimator to pick that query; ``all``
    adds the mean BCE of every query's mask; ``none`` is the paper's loss on y alone."""
    query_loss_weight: float = 1.0
    score_loss_weight: float = 0.1
    """Weight of the estimator's cross-entropy against the best query (``query_loss: best``)."""
    dice_weight: float = 0.0
    """Weight of a Dice loss beside every cross-entropy term; 0 is the paper's cross-entropy alone."""
    no_target_weight: float = 1.0
    """Weight of the no-target head's binary cross-entropy (a sample whose mask is empty refers to
    nothing); used only by a model with ``model.no_target``."""
    target_resize: str = "area"
    """How the ground truth is resized to the mask's 4H3 x 4W3: ``area`` (each cell the share of
    it the object covers) or ``nearest`` (each cell wholly in or out)."""
    bf16: bool = True
    """bf16 autocast when training on a GPU (ignored on CPU)."""
    seed: int = 0
    output_dir: str = "runs/mmnet"
    log_every: int = 20
    tensorboard: bool = True

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"train.micro_batch_size must be at least 1, got {self.micro_batch_size}")
        for name in ("lr", "lr_power"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"train.{name} must be above 0, got {getattr(self, name)}")
        _check_choice("train.query_loss", self.query_loss, QUERY_LOSSES)
        _check_choice("train.target_resize", self.target_resize, TARGET_RESIZES)
        for name in (
            "backbone_lr_mult", "weight_decay", "grad_clip", "query_loss_weight", "score_loss_weight", "dice_weight", "no_target_weight"
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must not be negative, got {getattr(self, name)}")


@dataclass
class EvalConfig:
    threshold: float = 0.35
    """Probability above which a pixel belongs to the object."""
    no_target_threshold: float = 0.5
    """With ``model.no_target``: no-target probability above which the expression is taken to
    refer to nothing, and its mask is left empty."""
    batch_size: int = 16
    compile: bool = False
    """torch.compile the model (`MMNet.compile`) in `mmnet eval`, `mmnet predict` and the
    predictor; validation during training stays eager. The first batch of each new shape waits
    for the compiler; docs/performance.md has what it gains where it was measured."""
    precision: str = "auto"
    """What `mmnet eval`, validation, the predictor and `mmnet serve` compute in: ``auto`` (bf16
    autocast where the device multiplies bf16 in hardware: a GPU with bf16, a CPU with AMX-BF16
    or AVX512-BF16; fp32 elsewhere), ``fp32``, or ``bf16`` (autocast on any device)."""

    def validate(self) -> None:
        for name in ("threshold", "no_target_threshold"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must lie between 0 and 1, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be at least 1, got {self.batch_size}")
        _check_choice("eval.precision", self.precision, PRECISIONS)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "Config":
        self.model.validate()
        self.train.validate()
        self.eval.validate()
        if self.data.num_workers < 0:
            raise ConfigError(f"data.num_workers must not be negative, got {self.data.num_workers}")
        if self.model.no_target and self.train.no_target_weight == 0:
            # A head no loss reaches would never learn, and leaves weights without gradients under DDP.
            raise ConfigError("model.no_target needs train.no_target_weight above 0: nothing else trains its head")
        return self


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, kind: Any, key: str, source: str) -> Any:
    """Checks ``value`` against the annotated type ``kind``; converts only where no meaning is lost."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, source)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return _build(kind, value, key, source)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{source}: '{key}' must be of type {getattr(kind, '__name__', kind)}, got {value!r}")


def _build(cls, values: dict, prefix: str, source: str):
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        where = f"'{prefix}.{unknown[0]}'" if prefix else f"'{unknown[0]}'"
        raise ConfigError(f"{source}: unknown setting {where}; known here: {', '.join(types_)}")
    kwargs = {}
    for name, kind in types_.items():
        if name in values:
            kwargs[name] = _coerce(values[name], kind, f"{prefix}.{name}" if prefix else name, source)
    return cls(**kwargs)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml((path.parent / base).resolve())
    _merge(merged, data)
    return merged


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.num_queries=8"`` -> (["model", "num_queries"], 8)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def config_from_dict(values: dict, source: str = "config") -> Config:
    return _build(Config, values, "", source).validate()


def _apply_overrides(values: dict, overrides: Iterable[str]) -> None:
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{k}' is not a section")
        node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Reads a YAML file (or starts from the defaults) and applies ``key.sub=value`` overrides."""
    values: dict = _read_yaml(Path(path)) if path is not None else {}
    overrides = list(overrides)
    _apply_overrides(values, overrides)
    source = str(path) if path is not None else "defaults"
    return config_from_dict(values, f"{source} + overrides" if overrides else source)


PAPER_TEXT = {
    "model": {"mask_sum": "logit", "word_logit_scale": None, "estimator_residual": False, "init": "pytorch"},
    "train": {"query_loss": "none", "dice_weight": 0.0, "target_resize": "nearest"},
}
"""The settings that undo every departure from the paper's text (docs/model.md, "Departures"):
the model and the training exactly as the paper writes them."""


def paper_text_overrides() -> list[str]:
    """``PAPER_TEXT`` as ``key.sub=value`` overrides."""
    return [f"{section}.{key}={yaml.safe_dump(value).splitlines()[0]}" for section, values in PAPER_TEXT.items() for key, value in values.items()]


def with_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """A copy of ``config`` with ``key.sub=value`` overrides applied."""
    values = config_to_dict(config)
    _apply_overrides(values, overrides)
    return config_from_dict(values, "overrides")


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
