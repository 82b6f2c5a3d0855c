"""Building, training and running the timm encoders (torch and timm are imported here only).

From scratch, a node trains its encoder on its own training split with the family's recipe
(``registry.Recipe``): AdamW (no weight decay on biases and norms), linear warmup then cosine,
label-smoothed cross entropy, batched GPU/CPU-side augmentation. Latents are the encoder's
pooled pre-logits features, ``forward_head(forward_features(x), pre_logits=True)``, in float32.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semalign.common.errors import WeightsUnavailable
from semalign.encoders.datasets import Split, to_tensor
from semalign.encoders.registry import EncoderSpec, Recipe

log = logging.getLogger(__name__)

#: Called as ``tick(done, total)`` while training or encoding.
Tick = Callable[[int, int], None]

_SCRATCH_MEAN = 0.5
_SCRATCH_STD = 0.5


_THREADS_SET = False


def setup_torch(threads: int | None = None) -> None:
    """Set torch's intra-op threads: ``threads`` if given, else once per process to every core
    this process may use (``$SEMALIGN_THREADS`` overrides). A worker process calls it with its
    share first, so the later argument-less calls keep that share."""
    global _THREADS_SET
    import torch

    if threads is None:
        if _THREADS_SET:
            return
        env = os.environ.get("SEMALIGN_THREADS")
        threads = int(env) if env else len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, threads))
    _THREADS_SET = True


def bf16_supported(device: str) -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively (not emulated, which is slower)."""
    import torch

    if torch.device(device).type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class InputSpec:
    """How images are fed to a model: square size and per-channel normalization."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def prepare(self, images: np.ndarray, device: str = "cpu"):
        import torch

        x = to_tensor(images, self.size).to(device)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (x - mean) / std


def scratch_input(image_size: int) -> InputSpec:
    return InputSpec(image_size, (_SCRATCH_MEAN,) * 3, (_SCRATCH_STD,) * 3)


def build_scratch_model(
    spec: EncoderSpec, image_size: int, num_classes: int, seed: int, timm_kwargs: dict | None = None
):
    """A randomly initialized timm model for ``spec`` at ``image_size`` (seeded).

    ``timm_kwargs`` (as recorded in a cache entry) replaces ``spec.timm_kwargs(image_size)``.
    """
    import timm
    import torch

    torch.manual_seed(seed)
    kwargs = spec.timm_kwargs(image_size) if timm_kwargs is None else dict(timm_kwargs)
    return timm.create_model(spec.name, pretrained=False, num_classes=num_classes, **kwargs)


def build_pretrained_model(name: str, weights_file: str | Path | None = None):
    """A timm model with its pretrained weights (hub cache, network, or ``weights_file``).

    Returns ``(model, InputSpec)`` with the model's own input size and normalization. Raises
    ``WeightsUnavailable`` quickly when the weights are neither local nor downloadable.
    """
    import timm
    from timm.data import resolve_data_config

    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise WeightsUnavailable(f"weights file for {name} not found: {path}")
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        _check_hub_weights(name)
        model = timm.create_model(name, pretrained=True)
    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    return model, InputSpec(size, tuple(config["mean"]), tuple(config["std"]))


def _hub_id(name: str) -> str | None:
    """The Hugging Face repo (``repo@revision``) timm loads ``name``'s weights from, if any."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def _in_hub_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        return True
    repo, _, revision = hub_id.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
            return True
    return False


def check_pretrained_available(names: list[str]) -> None:
    """Fail fast, before any work, when ``names``' pretrained weights cannot be had here.

    Raises ValueError (one line) for a model timm has no pretrained weights for, and
    ``WeightsUnavailable`` (one line, naming every such encoder and what to do) when weights
    hosted on the Hugging Face hub are not in its cache and the hub cannot be reached (checked
    once, at most 3 s). Weights timm fetches from a plain URL are left to timm.
    """
    import timm

    from semalign.encoders.datasets import network_available

    missing = []
    for name in names:
        base, _, tag = name.partition(".")
        if not (timm.list_pretrained(name) if tag else timm.list_pretrained(f"{base}.*")):
            raise ValueError(
                f"timm has no pretrained weights for {name}; drop --pretrained to train it "
                "locally, or pick a model with weights (timm.list_pretrained())"
            )
        hub_id = _hub_id(name)
        if hub_id and not _in_hub_cache(hub_id):
            missing.append(f"{name} ({hub_id})")
    if not missing:
        return
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if offline or not network_available(("huggingface.co", 443)):
        first = missing[0].split(" ", 1)[0]
        raise WeightsUnavailable(
            f"pretrained weights for {', '.join(missing)} are not in the Hugging Face cache "
            "and the hub cannot be reached. Copy each weights file here and pass "
            f"--weights {first}=PATH (one per encoder), populate the cache on a connected "
            "machine (HF_HOME), or run without --pretrained to train each encoder locally"
        )


def _check_hub_weights(name: str) -> None:
    """Fail fast when ``name``'s weights are not in the HF cache and the hub is unreachable."""
    check_pretrained_available([name])


def _lr_at(step: int, total: int, warmup: int, recipe: Recipe) -> float:
    if warmup > 0 and step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = recipe.lr * recipe.final_lr_frac
    return floor + (recipe.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def augment(x, mode: str, generator, flip: bool):
    """Batched random affine augmentation of ``x`` (b, 3, s, s) in [0, 1] (zero padding).

    ``light``: translation up to 1/16 of the side. ``strong``: the same translation, rotation up
    to 10 degrees, scale 0.9-1.1, and horizontal flips when ``flip`` allows them. Magnitudes are
    small on purpose: the digits fill their 8x8 frame, so a shift of a whole original pixel
    (1/8 of the side) cuts strokes off and measurably hurt accuracy.
    """
    import torch
    import torch.nn.functional as F

    b = x.shape[0]

    def uniform(lo: float, hi: float):
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    shift = 0.125  # 1/16 of the side in normalized [-1, 1] coordinates
    tx, ty = uniform(-shift, shift), uniform(-shift, shift)
    if mode == "strong":
        angle = uniform(-10.0, 10.0) * (math.pi / 180.0)
        scale = uniform(0.9, 1.1)
    else:
        angle = torch.zeros(b)
        scale = torch.ones(b)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.ones(b)
    if flip and mode == "strong":
        sx = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.stack(
        [torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _optimizer(model, recipe: Recipe, name: str):
    """The recipe's optimizer; no weight decay on biases and norm parameters."""
    import torch

    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r} in the recipe of {name}")


def train_scratch(
    spec: EncoderSpec,
    train: Split,
    *,
    image_size: int,
    seed: int,
    flip: bool,
    num_classes: int = 10,
    recipe: Recipe | None = None,
    device: str | None = None,
    tick: Tick | None = None,
):
    """Train ``spec`` from scratch on ``train`` with its recipe; returns the model in eval mode.

    On the CPU it trains with one intra-op thread, whatever this process's torch thread count
    (as :func:`extract_latents` encodes): a CPU kernel splits its reductions by thread count,
    and training amplifies those last bits, so the same seed trained by a lone build (every
    core) and by a worker of a parallel build (its share) gave visibly different weights and
    latents under one cache key (``mobilenetv3_small_075``, digits, 16x16, one epoch: latents
    apart by up to 0.86 on a scale of 20). By default a parallel build runs one single-threaded
    worker per core anyway; a lone build on a many-core machine trains slower than before.
    """
    import torch

    from semalign.common.threads import single_torch_thread

    setup_torch()
    device = pick_device(device)
    on_cpu = torch.device(device).type == "cpu"
    with single_torch_thread() if on_cpu else contextlib.nullcontext():
        return _train(spec, train, image_size, seed, flip, num_classes, recipe, device, tick)


def _train(
    spec: EncoderSpec,
    train: Split,
    image_size: int,
    seed: int,
    flip: bool,
    num_classes: int,
    recipe: Recipe | None,
    device: str,
    tick: Tick | None,
):
    """:func:`train_scratch` on ``device``, with the process's torch threads as they are."""
    import torch

    recipe = recipe or spec.recipe
    model = build_scratch_model(spec, image_size, num_classes, seed).to(device)
    use_bf16 = recipe.bf16 and bf16_supported(device)
    model.training_precision = "bf16" if use_bf16 else "fp32"  # recorded in the cache meta
    inputs = scratch_input(image_size)
    optimizer = _optimizer(model, recipe, spec.name)
    generator = torch.Generator().manual_seed(seed)
    n = len(train)
    batch = min(recipe.batch_size, n)
    steps_per_epoch = max(1, n // batch)  # drop the ragged last batch (BatchNorm needs > 1)
    total = recipe.epochs * steps_per_epoch
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    labels = torch.from_numpy(train.labels)
    mean = torch.tensor(inputs.mean).view(1, 3, 1, 1)
    std = torch.tensor(inputs.std).view(1, 3, 1, 1)
    base = to_tensor(train.images, image_size)  # all training images, (n, 3, s, s) in [0, 1]
    model.train()
    step = 0
    started = time.perf_counter()
    for _epoch in range(recipe.epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            x = base[idx]
            if recipe.augment != "none":
                x = augment(x, recipe.augment, generator, flip)
            x = ((x - mean) / std).to(device)
            lr = _lr_at(step, total, warmup, recipe)
            y = labels[idx].to(device)
            loss = _sgd_step(model, optimizer, x, y, lr, recipe, use_bf16, spec.name)
            step += 1
            if tick is not None:
                tick(step, total)
    log.info(
        "%s: trained %d steps in %.1fs (last loss %.3f)",
        spec.name,
        total,
        time.perf_counter() - started,
        loss.item(),
    )
    recalibrate_batchnorm(model, base, mean, std, batch, device)
    model.eval()
    return model


def _sgd_step(model, optimizer, x, y, lr: float, recipe: Recipe, use_bf16: bool, name: str):
    """One optimizer step at learning rate ``lr`` on the normalized batch x (b, 3, s, s) with
    labels y (b,); returns the loss. FloatingPointError when the loss is not finite."""
    import torch
    import torch.nn.functional as F

    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name}: training loss became {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def recalibrate_batchnorm(model, images, mean, std, batch: int, device: str) -> None:
    """Re-estimate BatchNorm running statistics on un-augmented training images.

    Training sees augmented batches while evaluation sees clean images; at 32x32 the late
    stages of a convnet work on 1x1 maps and their running statistics (an exponential average
    over noisy batch statistics) are far from the clean population. A forward pass in training
    mode with a cumulative average (``momentum=None``) replaces them by the exact averages of
    the batch statistics, which costs one forward pass over the training split.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images) - batch + 1, batch):
            x = ((images[start : start + batch] - mean) / std).to(device)
            model(x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


def extract_latents(
    model,
    images: np.ndarray,
    inputs: InputSpec,
    *,
    batch_size: int = 256,
    device: str | None = None,
    tick: Tick | None = None,
) -> np.ndarray:
    """Pooled pre-logits features of ``images`` (n, h, w, 3) as float32 (n, d).

    On the CPU the forward passes run with one intra-op thread, whatever this process's torch
    thread count: a CPU kernel's reductions are split by thread count, so the same weights
    encoded by a lone build (every core) and by a worker of a parallel build (its share) would
    otherwise differ in the last bits (about 1e-6), and a re-encoded entry would not equal the
    one it replaces.
    """
    import torch

    from semalign.common.threads import single_torch_thread

    setup_torch()
    device = pick_device(device)
    model = model.to(device).eval()
    out: list[np.ndarray] = []
    n = len(images)
    on_cpu = torch.device(device).type == "cpu"
    with single_torch_thread() if on_cpu else contextlib.nullcontext(), torch.inference_mode():
        for start in range(0, n, batch_size):
            x = inputs.prepare(images[start : start + batch_size], device)
            feats = model.forward_head(model.forward_features(x), pre_logits=True)
            out.append(feats.float().reshape(len(x), -1).cpu().numpy())
            if tick is not None:
                tick(min(n, start + batch_size), n)
    latents = np.concatenate(out).astype(np.float32, copy=False)
    if not np.all(np.isfinite(latents)):
        raise FloatingPointError("encoder produced non-finite latents")
    return latents


def head_accuracy(model, split: Split, inputs: InputSpec, device: str | None = None) -> float:
    """Accuracy of the model's own classification head on ``split`` (a training diagnostic)."""
    import torch

    device = pick_device(device)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(split), 256):
            x = inputs.prepare(split.images[start : start + 256], device)
            pred = model(x).argmax(1).cpu().numpy()
            correct += int((pred == split.labels[start : start + 256]).sum())
    return correct / max(1, len(split))
