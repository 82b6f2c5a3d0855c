"""Which encoders exist, how each family is built for small images, and how it is trained.

Every node (the AP and each user) owns one encoder, named by its timm model name. Any timm
model name (``timm.list_models()``) is accepted, optionally with a pretrained tag
(``name.tag``, checked against ``timm.list_pretrained()``; the tag selects the weights of
``--pretrained`` and changes nothing from scratch). Table I's encoders are *registered*
(``ENCODERS``): their timm arguments for the small images of this project (32x32 by default)
and their from-scratch recipes were tuned and measured here, and their cache keys are fixed.
Every other name gets the rule of its *family* (``FAMILIES``, by name prefix: vit/deit, levit,
efficientvit, mobilenet, rexnet, resnet, convnext, ...) or, for an unknown family,
``FALLBACK``. Importing this module does not import torch or timm; resolving a name that is not
registered imports timm (to check it).

Groups let a command line name a whole set: ``GROUPS`` are the paper's (``paper-users``, the
ten users of Table I, ``homogeneous`` and ``heterogeneous``, the two four-user settings),
trained locally by default; ``REFERENCE_GROUPS`` are the reference implementation's exact
encoders (``reference``, ``reference-users``, ``reference-homogeneous``,
``reference-heterogeneous``), with its pretrained tags. ``DEFAULT_AP`` is the AP's ViT-tiny.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
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
        name: timm model name, with its pretrained tag if one was given (also the cache
            directory name).
        family: how it is built small: ``vit``, ``levit``, ``efficientvit``, ``convnet``
            (mobilenetv3, rexnet, ...) or ``other`` (timm's defaults, see ``sized``).
        recipe: from-scratch training recipe.
        vit_grid: for ViTs, patches per side at any image size (the timm name's patch size is
            scaled to the small image: ``patch16`` at 224 is a 14x14 grid, here it becomes
            ``vit_grid`` x ``vit_grid``; ``patch32`` gets half as many per side).
        model_kwargs: extra timm arguments for from-scratch models (e.g. a reduced ``depth``).
        epoch_seconds: measured seconds per training epoch on digits at 32x32 with one thread;
            only used to start the longest jobs first.
        sized: for ``other``, the model has a fixed input size (timm's ``fixed_input_size``,
            e.g. Swin): it gets ``img_size``.
        rule: where the settings come from: ``registered`` (tuned here) or the name of the
            family rule (``FAMILIES``, ``FALLBACK``).
    """

    name: str
    family: str
    recipe: Recipe
    vit_grid: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epoch_seconds: float = 5.0
    sized: bool = False
    rule: str = "registered"

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
        elif self.sized:
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

#: The reference implementation's AP (its README's classifier list, Table I).
REFERENCE_AP: str = "vit_tiny_patch16_224"

#: The reference implementation's exact encoders, with its pretrained tags. ``reference`` is the
#: README's classifier command (``scripts/train_classifier.py rx_enc=...``), in its order: the AP
#: and the ten users. Its README does not list the homogeneous/heterogeneous configs' members;
#: they are Table I's, spelled as in that list (``efficientvit_m5.r224_in1k``). Unlike
#: ``paper-users`` it has ``vit_base_patch32_clip_224`` and ``levit_128s``.
_REFERENCE_USERS: tuple[str, ...] = (
    "vit_small_patch16_224",
    "vit_small_patch32_224",
    "vit_base_patch16_224",
    "vit_base_patch32_clip_224",
    "rexnet_100",
    "mobilenetv3_small_075",
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
    "efficientvit_m5.r224_in1k",
    "levit_128s.fb_dist_in1k",
)
REFERENCE_GROUPS: dict[str, tuple[str, ...]] = {
    "reference": (*_REFERENCE_USERS, REFERENCE_AP),
    "reference-users": _REFERENCE_USERS,
    "reference-homogeneous": (
        "mobilenetv3_small_075",
        "mobilenetv3_small_100",
        "rexnet_100",
        "mobilenetv3_large_100",
    ),
    "reference-heterogeneous": (
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "mobilenetv3_small_075",
        "efficientvit_m5.r224_in1k",
    ),
}

#: Every named group (a command line may name any of them).
ALL_GROUPS: dict[str, tuple[str, ...]] = {**GROUPS, **REFERENCE_GROUPS}

#: The default set to encode: the AP plus every user of every paper group, deduplicated.
DEFAULT_SET: tuple[str, ...] = tuple(
    dict.fromkeys((DEFAULT_AP, *(name for group in GROUPS.values() for name in group)))
)


# ---------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    """The rule for every timm model of a family that is not registered.

    Attributes:
        name: the family's name (shown by ``semalign encode --list``, recorded as ``rule``).
        prefixes: timm name prefixes of the family (the longest matching prefix wins).
        kind: how it is built small (``EncoderSpec.family``).
        recipe: from-scratch recipe.
        model_kwargs: extra timm arguments (ViTs get theirs from the name, see ``_vit_rule``).
    """

    name: str
    prefixes: tuple[str, ...]
    kind: str
    recipe: Recipe
    model_kwargs: dict[str, Any] = field(default_factory=dict)


# ConvNeXt (LayerNorm, patchify stem) wants a lower peak lr than the batch-norm convnets.
_CONVNEXT = dataclasses.replace(_CONVNET, lr=1e-3)
#: Unknown families: AdamW at 1e-3 with light augmentation is a safe default for convnets and
#: transformers alike; 10 epochs sits between the convnet and the ViT recipes.
_FALLBACK = Recipe(epochs=10, lr=1e-3, batch_size=64, warmup_epochs=1.0, augment="light")

#: Family rules for names that are not registered (vit and deit ViTs, LeViT and EfficientViT-M
#: get ``img_size``; ViTs the patch grid and depth of their registered relatives).
FAMILIES: tuple[Family, ...] = (
    Family("vit", ("vit_", "deit_", "deit3_"), "vit", dataclasses.replace(_VIT, epochs=15)),
    Family("levit", ("levit_",), "levit", _HYBRID, {"distilled": False}),
    Family("efficientvit-msra", ("efficientvit_m",), "efficientvit", _HYBRID),
    Family("efficientvit-mit", ("efficientvit_b", "efficientvit_l"), "convnet", _HYBRID),
    Family(
        "mobilenet",
        ("mobilenetv1_", "mobilenetv2_", "mobilenetv3_", "mobilenetv4_", "tf_mobilenetv3_"),
        "convnet",
        _CONVNET,
    ),
    Family("rexnet", ("rexnet",), "convnet", _CONVNET),
    Family(
        "resnet",
        ("resnet", "resnext", "seresnet", "seresnext", "wide_resnet", "ecaresnet"),
        "convnet",
        _CONVNET,
    ),
    Family("convnext", ("convnext",), "convnet", _CONVNEXT),
    Family(
        "efficientnet",
        ("efficientnet", "tf_efficientnet", "mnasnet", "ghostnet"),
        "convnet",
        _CONVNET,
    ),
    Family("regnet", ("regnet",), "convnet", _CONVNET),
)

#: Any other family: timm's default arguments (plus ``img_size`` when timm says the model's
#: input size is fixed, e.g. Swin) and the ``_FALLBACK`` recipe.
FALLBACK = Family("other", (), "other", _FALLBACK)

_PATCH = re.compile(r"patch(\d+)")


def family_of(base: str) -> Family:
    """The family rule of a timm model name without tag (``FALLBACK`` if none matches)."""
    best, length = FALLBACK, 0
    for family in FAMILIES:
        for prefix in family.prefixes:
            if base.startswith(prefix) and len(prefix) > length:
                best, length = family, len(prefix)
    if best.kind == "vit" and not _PATCH.search(base):
        return FALLBACK  # hybrid ViTs (vit_base_r50_s16_224): no patch grid to scale
    return best


def _vit_rule(name: str, base: str, family: Family) -> EncoderSpec:
    """A ViT by its registered relatives: 4x4 tokens (2x2 for patch32 and coarser), depth by
    width (tiny 6, small 4, wider 2), average-pooled tokens without class token (distilled
    DeiTs keep their class and distillation tokens: their head reads them)."""
    patch = int(_PATCH.search(base).group(1))
    depth = 6 if "tiny" in base else 4 if "small" in base else 2
    kwargs: dict[str, Any] = {"depth": depth}
    if "distilled" not in base:
        kwargs.update(global_pool="avg", class_token=False)
    grid = 2 if patch >= 32 else 4
    return EncoderSpec(name, "vit", family.recipe, grid, kwargs, rule=family.name)


def _rule_spec(name: str, base: str) -> EncoderSpec:
    family = family_of(base)
    if family.kind == "vit":
        return _vit_rule(name, base, family)
    sized = False
    if family.kind == "other":
        import timm

        cfg = timm.models.get_pretrained_cfg(base)
        sized = bool(getattr(cfg, "fixed_input_size", False))
    return EncoderSpec(
        name,
        family.kind,
        family.recipe,
        model_kwargs=dict(family.model_kwargs),
        sized=sized,
        rule=family.name,
    )


@functools.lru_cache(maxsize=1)
def timm_names() -> tuple[frozenset[str], frozenset[str]]:
    """(``timm.list_models()``, ``timm.list_pretrained()``) as sets (imports timm)."""
    import timm

    return frozenset(timm.list_models()), frozenset(timm.list_pretrained())


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


@functools.lru_cache(maxsize=256)
def get_spec(name: str) -> EncoderSpec:
    """The ``EncoderSpec`` of timm model ``name`` (``name`` or ``name.tag``).

    A registered name is answered without importing timm; any other is checked against timm's
    lists and gets its family's rule. ValueError (one line, with timm's closest names) for a
    name timm does not know or a pretrained tag it does not have.
    """
    if name in ENCODERS:
        return ENCODERS[name]
    base, _, tag = name.partition(".")
    models, pretrained = timm_names()
    if base not in models or not base:
        close = close_names(name, [*ENCODERS, *ALL_GROUPS, *models])
        hint = f"did you mean {', '.join(close)}?" if close else _NAMES_HINT
        raise ValueError(f"unknown encoder {name!r}: not a timm model; {hint}")
    if tag and name not in pretrained:
        tags = sorted(p.partition(".")[2] for p in pretrained if p.partition(".")[0] == base)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained weights in timm"
        raise ValueError(f"unknown pretrained tag {tag!r} for encoder {base!r}; {known}")
    if base in ENCODERS:  # a registered model with a tag: the same settings, under this name
        return dataclasses.replace(ENCODERS[base], name=name)
    return _rule_spec(name, base)


#: Where to look when no close name is found.
_NAMES_HINT = "semalign encode --list shows the groups, timm.list_models() every model name"


def pretrained_tags(name: str) -> list[str]:
    """``name.tag`` of every pretrained weight timm has for ``name`` (its default first)."""
    base, _, tag = name.partition(".")
    _, pretrained = timm_names()
    if tag:
        return [name] if name in pretrained else []
    import timm

    return list(timm.list_pretrained(f"{base}.*"))


def resolve_encoders(spec: str) -> list[str]:
    """Turn ``"group-name"``, ``"E1,E2"`` or a mix (``"paper-users,resnet18"``) into names.

    Groups are ``ALL_GROUPS``'s; names are any timm model names, optionally with a pretrained
    tag (``levit_128s.fb_dist_in1k``). Order is preserved and duplicates are dropped. The
    group ``default`` is ``DEFAULT_SET`` (AP plus every paper group's user). Raises ValueError
    listing close valid names for unknown ones.
    """
    names: list[str] = []
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if not parts:
        raise ValueError("no encoder named; give a group or comma-separated encoder names")
    for part in parts:
        if part == "default":
            names.extend(DEFAULT_SET)
        elif part in ALL_GROUPS:
            names.extend(ALL_GROUPS[part])
        else:
            names.append(get_spec(part).name)
    return list(dict.fromkeys(names))
