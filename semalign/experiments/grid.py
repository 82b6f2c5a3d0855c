"""The experiment grid of the paper's section IV: :class:`SweepGrid` and its presets.

A :class:`SweepGrid` is the cartesian product of strategies, channel uses K, antenna
configurations N_T x N_R, SNRs, user groups, pilot fractions, CSI modes, channels (fading
models with their correlations / K-factors, times CSI errors: :meth:`SweepGrid.channels`) and the
research options (task models, targets, pilot selections, user-group counts, equalizers:
:data:`RESEARCH_AXES`), run for every seed. A user-group count above 1 applies to the strategies
that share one F (``fed``), a widely-linear equalizer to those with ADMM rounds: the specs'
capabilities (:mod:`semalign.common.strategies`) say which; other strategies get no such cell
(:meth:`SweepGrid.configs`).
Presets reproduce the paper's figures (:func:`preset_fields`: ``fig2``, ``fig3``, ``snr``).
Every value is checked against :class:`~semalign.common.config.AlignmentConfig`'s own bounds, so
a bad value fails before any work, with the name of the option that set it
(:data:`OPTION_NAMES`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from semalign.common.channels import FADING_MODELS, ChannelConfig
from semalign.common.config import LEGACY_TASK_MODEL, AlignmentConfig
from semalign.common.errors import SweepError
from semalign.common.strategies import get_strategy, strategies_with, strategy_names

#: The paper's seeds (section IV).
PAPER_SEEDS: tuple[int, ...] = (27, 42, 100, 123, 144, 200)

#: The compression-factor grid of the reference experiments (communication.channel_usage).
PAPER_CHANNEL_USES: tuple[int, ...] = (1, 2, 4, 6, 8, 10, 20)

#: Grid presets named after the paper's figures (read them with :func:`preset_fields`); a
#: callable value is called when the preset is read (``strategy_names``: every strategy
#: registered by then, a plug-in's included). Command-line options override their fields.
_PRESETS: dict[str, dict[str, Any]] = {
    # Fig. 2: accuracy vs compression factor, 10 users, SNR 20 dB, square MIMO, all strategies.
    "fig2": {
        "strategies": strategy_names,
        "channel_uses": PAPER_CHANNEL_USES,
        "antennas": ("1x1", "2x2", "4x4"),
        "snr_db": (20.0,),
        "seeds": PAPER_SEEDS,
        "groups": ("paper-users",),
        "pilot_fractions": (1.0,),
        "csi": (True,),
    },
    # Fig. 3: network MSE and accuracy vs zeta, homogeneous vs heterogeneous, pilot fractions.
    "fig3": {
        "strategies": ("fed",),
        "channel_uses": PAPER_CHANNEL_USES,
        "antennas": ("4x4",),
        "snr_db": (20.0,),
        "seeds": PAPER_SEEDS,
        "groups": ("homogeneous", "heterogeneous"),
        "pilot_fractions": (0.1, 0.5, 1.0),
        "csi": (True,),
    },
    # Accuracy vs SNR (reference README, simulation=snr): 4x4, K in {1, 4, 8}.
    "snr": {
        "strategies": strategy_names,
        "channel_uses": (1, 4, 8),
        "antennas": ("4x4",),
        "snr_db": (-20.0, -10.0, 0.0, 10.0, 20.0, 30.0),
        "seeds": PAPER_SEEDS,
        "groups": ("paper-users",),
        "pilot_fractions": (1.0,),
        "csi": (True,),
    },
}

#: The presets' names.
PRESETS: tuple[str, ...] = tuple(_PRESETS)


def preset_fields(name: str) -> dict[str, Any]:
    """The grid fields of preset ``name`` (one of :data:`PRESETS`), computed now: the
    strategies of ``fig2`` and ``snr`` are those registered when this is called.

    Raises:
        SweepError: not a preset.
    """
    if name not in _PRESETS:
        raise SweepError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return {key: value() if callable(value) else value for key, value in _PRESETS[name].items()}


#: Grid fields that are lists, with the AlignmentConfig field each value must be valid for.
_LIST_FIELDS: dict[str, str] = {
    "strategies": "strategy",
    "channel_uses": "channel_uses",
    "snr_db": "snr_db",
    "seeds": "seed",
    "pilot_fractions": "pilot_fraction",
    "csi": "csi",
    "task_models": "task_model",
    "targets": "target",
    "pilot_selections": "pilot_selection",
    "user_groups": "user_groups",
    "equalizers": "equalizer",
}

#: The research axes (docs/research.md): grid field -> the AlignmentConfig field it sets. Their
#: defaults are the paper's method, one value each.
RESEARCH_AXES: dict[str, str] = {
    name: _LIST_FIELDS[name]
    for name in ("task_models", "targets", "pilot_selections", "user_groups", "equalizers")
}

#: The paper's value of each research option (the defaults of :class:`AlignmentConfig`).
RESEARCH_DEFAULTS: dict[str, Any] = {
    cfg_field: AlignmentConfig.model_fields[cfg_field].default
    for cfg_field in RESEARCH_AXES.values()
}

#: What a run ran when its table row has no column for a research option, or its cell key
#: does not hash it: the defaults of the version that added the option. The task model's
#: default was the logistic regression until the MLP became the default, so ``logistic`` is
#: still left out of cell keys (old tables keep their keys) and ``mlp`` is always hashed.
LEGACY_RESEARCH_VALUES: dict[str, Any] = {**RESEARCH_DEFAULTS, "task_model": LEGACY_TASK_MODEL}

#: The command-line option that sets each grid field (for error messages).
OPTION_NAMES: dict[str, str] = {
    "strategies": "--strategies",
    "channel_uses": "--channel-uses",
    "antennas": "--antennas",
    "snr_db": "--snr-db",
    "seeds": "--seeds",
    "groups": "--groups",
    "pilot_fractions": "--pilot-fractions",
    "csi": "--csi-modes",
    "iterations": "--iterations",
    "rho": "--admm-penalty",
    "power": "--power",
    "baseline_fit": "--baseline-fit",
    "topk_index_cost": "--topk-index-cost",
    "ap": "--ap-encoder",
    "axes": "--set",
    "channel_models": "--channel-models",
    "correlations": "--correlations",
    "k_factors": "--k-factors",
    "csi_errors": "--csi-errors",
    "task_models": "--task-models",
    "targets": "--targets",
    "pilot_selections": "--pilot-selections",
    "user_groups": "--user-groups",
    "equalizers": "--equalizers",
}

#: Channel axes: grid field -> the ChannelConfig field of its values.
_CHANNEL_FIELDS: dict[str, str] = {
    "channel_models": "model",
    "correlations": "rho_tx",
    "k_factors": "k_factor",
    "csi_errors": "csi_error_variance",
}


def parse_antennas(value: Any) -> tuple[int, int]:
    """``"4x4"`` / ``"2x4"`` (N_T x N_R) / ``"4"`` (square) / ``(4, 4)`` -> (N_T, N_R)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        nt, nr = value
    elif isinstance(value, int):
        nt = nr = value
    elif isinstance(value, str):
        parts = value.strip().lower().split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise ValueError(f"antenna configuration {value!r} is not N_TxN_R (e.g. 4x4, 2x4)")
        try:
            nt, nr = (int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"antenna configuration {value!r} is not N_TxN_R (e.g. 4x4, 2x4)"
            ) from None
    else:
        raise ValueError(f"antenna configuration {value!r} is not N_TxN_R (e.g. 4x4, 2x4)")
    for n in (nt, nr):
        if not isinstance(n, int) or not 1 <= n <= 256:
            raise ValueError(f"antenna configuration {value!r}: counts must be 1..256")
    return int(nt), int(nr)


def antennas_label(nt: int, nr: int) -> str:
    return f"{nt}x{nr}"


#: AlignmentConfig's defaults: a grid's one-value axes default to them (not a copy of them).
_DEFAULTS: dict[str, Any] = {
    name: info.get_default(call_default_factory=True)
    for name, info in AlignmentConfig.model_fields.items()
}


class SweepGrid(BaseModel):
    """The experiment grid: every list field is one axis of the cartesian product.

    Every value is checked against :class:`AlignmentConfig`'s own bounds, so a bad value fails
    here, before any work, with the option's name. Duplicates are dropped, order is kept.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategies: tuple[str, ...] = Field(
        default_factory=strategy_names, description="every registered strategy"
    )
    channel_uses: tuple[int, ...] = Field(PAPER_CHANNEL_USES, description="K values")
    antennas: tuple[tuple[int, int], ...] = Field(((4, 4),), description="(N_T, N_R) pairs")
    snr_db: tuple[float, ...] = Field((_DEFAULTS["snr_db"],), description="SNR per antenna, dB")
    seeds: tuple[int, ...] = Field((27, 42), description="seeds (runs per cell)")
    groups: tuple[str, ...] = Field(
        ("paper-users",), description="user groups: registry group names or enc1+enc2+..."
    )
    pilot_fractions: tuple[float, ...] = Field(
        (_DEFAULTS["pilot_fraction"],), description="fractions of train as pilots"
    )
    csi: tuple[bool, ...] = Field((_DEFAULTS["csi"],), description="channel-aware AP or not")
    iterations: int = _DEFAULTS["iterations"]
    rho: float = _DEFAULTS["rho"]
    power: float = _DEFAULTS["power"]
    baseline_fit: str = _DEFAULTS["baseline_fit"]
    topk_index_cost: str = _DEFAULTS["topk_index_cost"]
    ap: str | None = Field(None, description="AP encoder (None: the registry's default AP)")
    channel_models: tuple[str, ...] = Field(
        ("rayleigh",), description="fading models: " + ", ".join(FADING_MODELS)
    )
    correlations: tuple[float, ...] = Field(
        (), description="kronecker: rho, used at both ends (rho_tx = rho_rx), one cell each"
    )
    k_factors: tuple[float, ...] = Field((), description="rician: K-factors (linear)")
    csi_errors: tuple[float, ...] = Field((0.0,), description="CSI error variances (linear)")
    task_models: tuple[str, ...] = Field(
        (_DEFAULTS["task_model"],), description="users' task models"
    )
    targets: tuple[str, ...] = Field((_DEFAULTS["target"],), description="what users align")
    pilot_selections: tuple[str, ...] = Field(
        (_DEFAULTS["pilot_selection"],), description="which points are pilots"
    )
    user_groups: tuple[int, ...] = Field(
        (_DEFAULTS["user_groups"],),
        description="fed: groups of users with one F each (above 1: fed cells only)",
    )
    equalizers: tuple[str, ...] = Field(
        (_DEFAULTS["equalizer"],),
        description="ADMM: linear or widely-linear F and G (baselines: linear only)",
    )
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = Field(
        (),
        description="more axes (``sweep --set``): (config key, its values), crossed with the "
        "others; a ChannelConfig field as ``channel.<field>``; they override the fields above",
    )

    @field_validator("antennas", mode="before")
    @classmethod
    def _parse_antennas(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return tuple(parse_antennas(v) for v in value)

    @field_validator(*_LIST_FIELDS, *_CHANNEL_FIELDS, "antennas", "groups", mode="after")
    @classmethod
    def _dedupe(cls, value: tuple) -> tuple:
        return tuple(dict.fromkeys(value))

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for group in value:
            if not group.strip() or "," in group or any(not p.strip() for p in group.split("+")):
                raise ValueError(
                    f"group {group!r} must be a group name (paper-users, homogeneous, "
                    "heterogeneous) or encoder names joined by '+'"
                )
        return tuple(g.strip() for g in value)

    @model_validator(mode="after")
    def _check_values(self) -> SweepGrid:
        for name in (*_LIST_FIELDS, "antennas", "groups"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{OPTION_NAMES[name]} is empty")
        for name, cfg_field in _LIST_FIELDS.items():
            for value in getattr(self, name):
                _probe(name, {cfg_field: value})
        for nt, nr in self.antennas:
            _probe("antennas", {"antennas_tx": nt, "antennas_rx": nr})
        for name in ("iterations", "rho", "power", "baseline_fit", "topk_index_cost"):
            _probe(name, {name: getattr(self, name)})
        self.channels()  # every channel is valid
        for key, values in self.axes:
            if not values:
                raise ValueError(f"--set {key}: no values")
        if self.axes:
            for _ in self.configs():  # every crossing of the axes is a valid config
                pass
        if all(g > 1 for g in self.user_groups) and not _any_applies(self.strategies, GROUPED):
            shared = ", ".join(strategies_with("shared_pre_equalizer"))
            raise ValueError(f"{OPTION_NAMES['user_groups']} above 1 needs strategy {shared}")
        if set(self.equalizers) != {"linear"} and not _any_applies(self.strategies, WIDELY):
            raise ValueError(
                f"{OPTION_NAMES['equalizers']} widely-linear needs an ADMM strategy "
                f"({', '.join(strategies_with('has_rounds'))})"
            )
        return self

    def channels(self) -> list[ChannelConfig]:
        """The channel axis: every fading model (kronecker once per correlation, rician once per
        K-factor) times every CSI error. ValueError naming the option for a bad value, or for
        correlations / K-factors without the model that uses them."""
        for name in ("channel_models", "csi_errors"):
            if not getattr(self, name):
                raise ValueError(f"{OPTION_NAMES[name]} is empty")
        for name, model in (("correlations", "kronecker"), ("k_factors", "rician")):
            needed = model in self.channel_models
            if needed != bool(getattr(self, name)):
                raise ValueError(
                    f"{OPTION_NAMES['channel_models']} {model} needs {OPTION_NAMES[name]}"
                    if needed
                    else f"{OPTION_NAMES[name]} applies to {OPTION_NAMES['channel_models']} "
                    f"{model} only"
                )
        fading: list[dict[str, Any]] = []
        for model in self.channel_models:
            if model == "kronecker":
                fading += [{"model": model, "rho_tx": r, "rho_rx": r} for r in self.correlations]
            elif model == "rician":
                fading += [{"model": model, "k_factor": k} for k in self.k_factors]
            else:
                fading.append({"model": model})
        channels = []
        for params, error in itertools.product(fading, self.csi_errors):
            try:
                channels.append(ChannelConfig(**params, csi_error_variance=error))
            except ValidationError as exc:
                err = exc.errors()[0]
                field_ = str(err["loc"][0]) if err["loc"] else "model"
                grid_field = {v: k for k, v in _CHANNEL_FIELDS.items()}.get(field_)
                option = OPTION_NAMES.get(grid_field or "", "--channel-models")
                msg = str(err["msg"]).removeprefix("Value error, ")
                raise ValueError(f"{option}: {msg} (got {err.get('input')!r})") from None
        return channels

    @property
    def cells_per_seed(self) -> int:
        return sum(1 for _ in self.configs())

    def configs(self) -> Iterator[tuple[str, AlignmentConfig]]:
        """Every (group, config) of the grid, seed 0 (seeds are added per run).

        A user-group count above 1 is crossed with ``fed`` only (grouping shares one F per
        group; no other strategy has an F to share), a widely-linear equalizer with the ADMM
        strategies only (the baselines select complex features). The :attr:`axes` are crossed
        with every other field last."""
        for group, config in self._base_configs():
            for values in itertools.product(*(values for _, values in self.axes)):
                yield group, with_values(config, dict(zip(self.axes_keys, values, strict=True)))

    @property
    def axes_keys(self) -> tuple[str, ...]:
        """The config keys of :attr:`axes`, in order."""
        return tuple(key for key, _ in self.axes)

    def _base_configs(self) -> Iterator[tuple[str, AlignmentConfig]]:
        """:meth:`configs` before the :attr:`axes` are crossed in."""
        research = [
            dict(zip(RESEARCH_AXES.values(), values, strict=True))
            for values in itertools.product(*(getattr(self, n) for n in RESEARCH_AXES))
        ]
        for group, strategy, (nt, nr), k, snr, frac, csi, channel, options in itertools.product(
            self.groups,
            self.strategies,
            self.antennas,
            self.channel_uses,
            self.snr_db,
            self.pilot_fractions,
            self.csi,
            self.channels(),
            research,
        ):
            if not _applies(strategy, options):
                continue
            yield (
                group,
                AlignmentConfig(
                    strategy=strategy,
                    antennas_tx=nt,
                    antennas_rx=nr,
                    channel_uses=k,
                    snr_db=snr,
                    rho=self.rho,
                    power=self.power,
                    iterations=self.iterations,
                    csi=csi,
                    pilot_fraction=frac,
                    baseline_fit=self.baseline_fit,
                    topk_index_cost=self.topk_index_cost,
                    channel=channel,
                    seed=0,
                    **options,
                ),
            )


def with_values(config: AlignmentConfig, values: dict[str, Any]) -> AlignmentConfig:
    """``config`` with config keys set (``channel.<field>`` in its channel), validated.

    Raises:
        ValueError: the result is not a valid config (one line naming ``--set`` and the key).
    """
    if not values:
        return config
    data = config.model_dump()
    for key, value in values.items():
        if key.startswith("channel."):
            data["channel"][key.removeprefix("channel.")] = value
        else:
            data[key] = value
    try:
        return AlignmentConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise ValueError(f"--set {loc or 'values'}: {msg} (with {shown})") from None


def _probe(grid_field: str, values: dict[str, Any]) -> None:
    """Raise ValueError naming the option when ``values`` are not a valid AlignmentConfig."""
    try:
        AlignmentConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        got = values[err["loc"][0]] if err["loc"] and err["loc"][0] in values else values
        raise ValueError(f"{OPTION_NAMES[grid_field]}: {err['msg']} (got {got!r})") from None


def grid_from_options(preset: str | None, overrides: dict[str, Any]) -> SweepGrid:
    """A validated grid: the preset's fields (if any) updated by the non-None ``overrides``.

    Raises:
        SweepError: unknown preset or invalid value (one line naming the option).
    """
    fields: dict[str, Any] = {}
    if preset is not None:
        fields.update(preset_fields(preset))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SweepGrid(**fields)
    except ValidationError as exc:
        raise SweepError(_validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = err["loc"]
    if msg.startswith("--"):
        return msg
    option = OPTION_NAMES.get(str(loc[0]), str(loc[0])) if loc else "grid"
    return f"{option}: {msg} (got {err.get('input')!r})"


def _applies(strategy: str, options: dict[str, Any]) -> bool:
    """Whether the research ``options`` (one value per :data:`RESEARCH_AXES` field) make a cell
    for ``strategy``: user groups above 1 need a shared F, a widely-linear equalizer ADMM
    rounds (the strategy's capabilities)."""
    spec = get_strategy(strategy)
    if options["user_groups"] > 1 and not spec.shared_pre_equalizer:
        return False
    return options["equalizer"] == "linear" or spec.has_rounds


#: research options that only some strategies take (:func:`_applies`)
GROUPED: dict[str, Any] = {"user_groups": 2, "equalizer": "linear"}
WIDELY: dict[str, Any] = {"user_groups": 1, "equalizer": "widely-linear"}


def _any_applies(strategies: tuple[str, ...], options: dict[str, Any]) -> bool:
    """Whether ``options`` make a cell for any of ``strategies``."""
    return any(_applies(s, options) for s in strategies)
