"""Which encoders exist, how each family is built for small images, and how it is trained.

Every node (the AP and each user) owns one encoder, named by its timm model name. Table I of the
paper fixes the families; this registry fixes, per family, the timm arguments that make the
model fit the small images of this project (32x32 by default) and the from-scratch training
recipe used when no pretrained weights are available. Everything here is plain data: importing
this module does not import torch or timm.

Groups (``GROUPS``) let a command line name a whole set: ``paper-users`` (the ten users of
Table I), ``homogeneous`` and ``heterogeneous`` (the two four-user settings). ``DEFAULT_AP`` is
the AP's ViT-tiny.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

#: The AP's encoder (Table I: vit_tiny_patch16).
DEFAULT_AP: str = "vit_tiny_patch16_224"


@dataclass(frozen=True)
class Recipe:
    """How an encoder is trained from scratch on its own node's training split.

    Attributes:
        epochs: passes over the training split.
        lr: peak AdamW learning rate (linear warmup, then cosine decay to ``lr * final_lr_frac``).
        weight_decay: AdamW weight decay (not applied to biases and norm parameters).
        batch_size: training batch size.
        warmup_epochs: length of the linear warmup, in epochs (may be fractional).
        label_smoothing: cross-entropy label smoothing.
        augment: ``"light"`` (random translation) or ``"strong"`` (translation, rotation, scale,
            and horizontal flips where the dataset allows them), see ``train.augment``.
        final_lr_frac: learning rate at the end of the cosine, as a fraction of ``lr``.
        optimizer: ``adamw`` or ``sgd`` (Nesterov momentum 0.9).
        bf16: train under bfloat16 autocast where the hardware supports it natively (CPUs
            with AVX512-BF16/AMX, CUDA GPUs with bf16); float32 elsewhere. Latents are always
            computed in float32. Only worth it for matmul-bound models (ViTs).
    """

    epochs: int
    lr: float
    weight_decay: float = 0.05
    batch_size: int = 64
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augment: str = "light"
    final_lr_frac: float = 0.01
    optimizer: str = "adamw"
    bf16: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EncoderSpec:
    """One registered encoder.

    Attributes:
        name: timm model name (also the cache directory name).
        family: ``vit``, ``levit``, ``efficientvit`` or ``convnet`` (mobilenetv3, rexnet, ...).
        recipe: from-scratch training recipe.
        vit_grid: for ViTs, patches per side at any image size (the timm name's patch size is
            scaled to the small image: ``patch16`` at 224 is a 14x14 grid, here it becomes
            ``vit_grid`` x ``vit_grid``; ``patch32`` gets half as many per side).
        model_kwargs: extra timm arguments for from-scratch models (e.g. a reduced ``depth``).
        epoch_seconds: measured seconds per training epoch on digits at 32x32 with one thread;
            only used to start the longest jobs first.
    """

    name: str
    family: str
    recipe: Recipe
    vit_grid: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epoch_seconds: float = 5.0

    @property
    def cost(self) -> float:
        """Estimated single-thread training seconds at 32x32 on digits (for scheduling)."""
        return self.epoch_seconds * self.recipe.epochs

    def timm_kwargs(self, image_size: int) -> dict[str, Any]:
        """Arguments for ``timm.create_model`` of a from-scratch model at ``image_size``."""
        kwargs: dict[str, Any] = dict(self.model_kwargs)
        if self.family == "vit":
            grid = max(1, self.vit_grid)
            if image_size % grid:
                raise ValueError(
                    f"{self.name}: image size {image_size} is not divisible by its {grid}x{grid}"
                    " patch grid"
                )
            kwargs.update(img_size=image_size, patch_size=image_size // grid)
        elif self.family in ("levit", "efficientvit"):
            if image_size % 16:
                raise ValueError(
                    f"{self.name}: image size {image_size} is not a multiple of 16 (its stem"
                    " downsamples by 16)"
                )
            kwargs.update(img_size=image_size)
        return kwargs


# Recipes, tuned on digits at 32x32 on a 2-core CPU (docs/encoders.md has the measurements).
# Convnets at 32x32 end on 1x1 maps and learn fastest without augmentation in this budget (even
# small shifts cost accuracy at 8-12 epochs); ViTs overfit without it and need more epochs.
_CONVNET = Recipe(
    epochs=12, lr=3e-3, batch_size=32, warmup_epochs=0.5, augment="none", label_smoothing=0.1
)
_HYBRID = Recipe(
    epochs=5, lr=2e-3, batch_size=32, warmup_epochs=0.5, augment="none", label_smoothing=0.1
)
_VIT = Recipe(epochs=20, lr=1e-3, batch_size=64, warmup_epochs=2.0, augment="strong", bf16=True)


def _vit(name: str, grid: int, depth: int, epochs: int, cost: float) -> EncoderSpec:
    # Average-pooled tokens without a class token train faster from scratch on small data.
    kwargs = {"depth": depth, "global_pool": "avg", "class_token": False}
    recipe = dataclasses.replace(_VIT, epochs=epochs)
    return EncoderSpec(name, "vit", recipe, vit_grid=grid, model_kwargs=kwargs, epoch_seconds=cost)


_SPECS: tuple[EncoderSpec, ...] = (
    _vit("vit_tiny_patch16_224", grid=4, depth=6, epochs=20, cost=4.8),
    _vit("vit_small_patch16_224", grid=4, depth=4, epochs=15, cost=10.8),
    _vit("vit_small_patch32_224", grid=2, depth=4, epochs=15, cost=3.1),
    _vit("vit_base_patch16_224", grid=4, depth=2, epochs=10, cost=21.7),
    _vit("vit_base_patch32_224", grid=2, depth=2, epochs=15, cost=6.7),
    EncoderSpec("mobilenetv3_small_075", "convnet", _CONVNET, epoch_seconds=2.8),
    EncoderSpec("mobilenetv3_small_100", "convnet", _CONVNET, epoch_seconds=3.3),
    EncoderSpec("mobilenetv3_large_100", "convnet", _CONVNET, epoch_seconds=6.8),
    EncoderSpec("rexnet_100", "convnet", _CONVNET, epoch_seconds=6.9),
    EncoderSpec("resnet18", "convnet", _CONVNET, epoch_seconds=4.0),
    EncoderSpec("efficientvit_m5", "efficientvit", _HYBRID, epoch_seconds=9.3),
    EncoderSpec(
        "levit_128", "levit", _HYBRID, model_kwargs={"distilled": False}, epoch_seconds=3.2
    ),
)

#: Registered encoders by name.
ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in _SPECS}

#: Named groups of user encoders (Table I).
GROUPS: dict[str, tuple[str, ...]] = {
    "paper-users": (
        "efficientvit_m5",
        "levit_128",
        "rexnet_100",
        "vit_small_patch16_224",
        "vit_small_patch32_224",
        "vit_base_patch16_224",
        "vit_base_patch32_224",
        "mobilenetv3_small_075",
        "mobilenetv3_small_100",
        "mobilenetv3_large_100",
    ),
    "homogeneous": (
        "mobilenetv3_small_075",
        "mobilenetv3_small_100",
        "rexnet_100",
        "mobilenetv3_large_100",
    ),
    "heterogeneous": (
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "mobilenetv3_small_075",
        "efficientvit_m5",
    ),
}

#: The default set to encode: the AP plus every user of every group, deduplicated.
DEFAULT_SET: tuple[str, ...] = tuple(
    dict.fromkeys((DEFAULT_AP, *(name for group in GROUPS.values() for name in group)))
)


def close_names(name: str, candidates: list[str] | tuple[str, ...], n: int = 4) -> list[str]:
    """Valid names closest to ``name`` (difflib), best first; may be empty."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)


def unknown_name_message(kind: str, name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """A one-line error for an unknown ``kind`` called ``name``, listing close valid names."""
    close = close_names(name, candidates)
    hint = f"did you mean {', '.join(close)}?" if close else "valid names:"
    if not close:
        hint += " " + ", ".join(sorted(candidates))
    return f"unknown {kind} {name!r}; {hint}"


def get_spec(name: str) -> EncoderSpec:
    """The registered ``EncoderSpec`` called ``name``; ValueError listing close names if unknown."""
    try:
        return ENCODERS[name]
    except KeyError:
        valid = [*ENCODERS, *GROUPS]
        raise ValueError(unknown_name_message("encoder", name, valid)) from None


def resolve_encoders(spec: str) -> list[str]:
    """Turn ``"group-name"``, ``"E1,E2"`` or a mix (``"paper-users,resnet18"``) into names.

    Order is preserved and duplicates are dropped. The group ``default`` is ``DEFAULT_SET``
    (AP plus every grouped user). Raises ValueError listing close valid names for unknown ones.
    """
    names: list[str] = []
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts:
        raise ValueError("no encoder named; give a group or comma-separated encoder names")
    for part in parts:
        if part == "default":
            names.extend(DEFAULT_SET)
        elif part in GROUPS:
            names.extend(GROUPS[part])
        else:
            names.append(get_spec(part).name)
    return list(dict.fromkeys(names))
