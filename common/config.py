"""Validated configuration of an alignment session: the one place that defines defaults.

Defaults follow the paper (section IV): rho = 1, P_T = 1, T = 30, SNR 20 dB, 4x4 MIMO.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from semalign.common.channels import ChannelConfig
from semalign.common.errors import UsageError
from semalign.common.strategies import (
    admm_strategy_names,
    get_strategy,
    strategies_with,
    strategy_help,
    strategy_names,
)

#: The registered strategy names (``semalign.common.strategies``) as a type: its values are the
#: CLI choices. Validation asks the registry itself, so a strategy registered later is accepted.
Strategy = Literal[strategy_names()]  # type: ignore[valid-type]
#: The names themselves are asked of the registry when needed (``strategy_names()``,
#: ``admm_strategy_names()``), never copied at import: a plug-in registered later is in them.
BaselineFit = Literal["received", "full"]
IndexCost = Literal["none", "channel-uses"]
TaskModelKind = Literal["logistic", "mlp"]
#: The task model of the paper's evaluation (its authors' MLP classifier), the default.
PAPER_TASK_MODEL: TaskModelKind = "mlp"
#: What a record without a ``task_model`` ran (a results JSON, a sweep table row or cell key of
#: an older version): the logistic regression, the default before the paper's MLP.
LEGACY_TASK_MODEL: TaskModelKind = "logistic"
Target = Literal["latents", "logits", "task-subspace"]
PilotSelection = Literal["first", "random", "k-center", "herding"]
RoundProtocol = Literal["paper", "compact"]
Precision = Literal["double", "single"]
#: What a record without a ``precision`` ran (a results JSON older than the field), and the
#: value a sweep's cell key leaves out: double, the default before single precision.
LEGACY_PRECISION: Precision = "double"
#: precision of the float matrices on the wire (``semalign.common.wire.WireFormat``)
WirePrecision = Literal["native", "float16", "bfloat16"]
#: F and G strictly linear on the packed complex latents (the paper) or widely linear
#: (``semalign.common.representation``)
Equalizer = Literal["linear", "widely-linear"]
#: how the AP learns the users' local pre-equalizers: each one (plain) or only their sum
#: (secure aggregation, ``semalign.common.secure_aggregation``)
Aggregation = Literal["plain", "secure"]


class GeometryError(UsageError, ValueError):
    """A configuration that does not fit the latents (K N_T > d/2; Top-K side information that
    leaves no channel use for data)."""


class AlignmentConfig(BaseModel):
    """Everything that determines one alignment session (one seed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = Field("fed", description=strategy_help())
    antennas_tx: int = Field(4, ge=1, le=256, description="N_T, AP antennas")
    antennas_rx: int = Field(4, ge=1, le=256, description="N_R, antennas per user")
    channel_uses: int = Field(2, ge=1, le=4096, description="K, channel uses per data point")
    snr_db: float = Field(20.0, ge=-50.0, le=100.0, description="SNR per receive antenna, dB")
    rho: float = Field(1.0, gt=0.0, le=1e6, description="ADMM penalty rho")
    power: float = Field(1.0, gt=0.0, le=1e6, description="P_T, transmit power budget")
    iterations: int = Field(30, ge=1, le=100_000, description="T, ADMM rounds")
    csi: bool = Field(True, description="channel-aware AP (users send Hbar_l at handshake)")
    pilot_fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of train as pilots")
    baseline_fit: BaselineFit = Field(
        "received", description="First-K/Top-K alignment fitted on received pilots or full X"
    )
    topk_index_cost: IndexCost = Field(
        "none", description="charge Top-K index bits as channel uses (at Shannon capacity)"
    )
    channel: ChannelConfig = Field(
        ChannelConfig(),
        description="the users' channels: fading law, CSI error, per-user SNR "
        "(default: i.i.d. Rayleigh, perfect CSI, snr_db for every user)",
    )
    protocol: RoundProtocol = Field(
        "paper",
        description="ADMM rounds as in the paper (S_l down, P_l up: O(K N n) bytes a round) or "
        "compact (pilots X once at the handshake, then F down and P_l X^H up: O(K N d) bytes; "
        "users that cannot get paper)",
    )
    precision: Precision = Field(
        "single",
        description="arithmetic of the ADMM strategies' O(n) per-round products: single "
        "(complex64, as the authors' code; iterates within 1e-5 of double, the paper's presets "
        "unchanged at their reporting precision; whitening, S S^H, the G-step solve and the "
        "F-step stay double) or double (complex128, the regression-pinned path)",
    )
    wire_precision: WirePrecision = Field(
        "native",
        description="float matrices on the wire (features, symbols, F, uploads): native "
        "(complex64, float32 when widely linear) or float16/bfloat16 (half the bytes, decoded "
        "to the working precision; B = X X^H, Z - U, CSI, the baselines' whitening and "
        "precoder and secure aggregation's fixed-point uploads keep theirs)",
    )
    seed: int = Field(42, ge=0, le=2**32 - 1)
    # ---- research options (docs/research.md); their defaults are the paper's method
    task_model: TaskModelKind = Field(
        PAPER_TASK_MODEL,
        description="each user's task model: the paper's MLP (default) or a logistic "
        "regression on standardized latents",
    )
    target: Target = Field(
        "latents",
        description="what users align: native latents, task-model logits or the task subspace",
    )
    target_dim: int = Field(
        0, ge=0, le=4096, description="task-subspace dimension r (0: the number of classes)"
    )
    pilot_selection: PilotSelection = Field(
        "first",
        description="which train points are pilots (chosen by the AP in its whitened space)",
    )
    user_groups: int = Field(
        1,
        ge=1,
        le=64,
        description="fed: groups of compatible users, one F each, sharing the K channel uses",
    )
    equalizer: Equalizer = Field(
        "linear",
        description="ADMM strategies: F and G strictly linear on the packed complex latents "
        "(the paper) or widely linear (any real-linear map, the real-composite system)",
    )

    aggregation: Aggregation = Field(
        "plain",
        description="plain (the AP runs every user's F-step) or secure (each user runs its own "
        "F-step and the AP learns only the sum of the F_l, masked pairwise; needs strategy fed "
        "and protocol compact)",
    )
    dp_noise_multiplier: float = Field(
        0.0,
        ge=0.0,
        le=1e6,
        description="differential privacy (needs aggregation secure): Gaussian noise on each "
        "round's sum, z times its sensitivity 2 dp_clip; 0: off",
    )
    dp_clip: float = Field(
        1.0, gt=0.0, le=1e6, description="differential privacy: Frobenius norm bound of each F_l"
    )
    dp_delta: float = Field(
        1e-5, gt=0.0, lt=1.0, description="differential privacy: the delta epsilon is reported at"
    )

    @field_validator("strategy", mode="plain")
    @classmethod
    def _registered(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"strategy must be a name, got {value!r}")
        return get_strategy(value).name

    @field_validator("snr_db", "rho", "power", "pilot_fraction", "dp_clip", "dp_delta")
    @classmethod
    def _finite(cls, value: float) -> float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be finite")
        return value

    @model_validator(mode="after")
    def _equalizer_needs_admm(self) -> AlignmentConfig:
        if self.equalizer != "linear" and not get_strategy(self.strategy).has_rounds:
            raise ValueError(
                f"equalizer {self.equalizer} needs an ADMM strategy "
                f"({', '.join(admm_strategy_names())}); {self.strategy} selects complex "
                "features and stays strictly linear"
            )
        return self

    @model_validator(mode="after")
    def _secure_needs_shared_compact(self) -> AlignmentConfig:
        if self.aggregation == "secure" and (
            not get_strategy(self.strategy).secure_aggregation
            or self.protocol != "compact"
            or self.user_groups != 1
        ):
            secure = ", ".join(strategies_with("secure_aggregation"))
            raise ValueError(
                f"aggregation secure needs strategy {secure} (one shared F), protocol compact "
                "(each user holds X X^H for its own F-step) and user_groups 1; got strategy "
                f"{self.strategy}, protocol {self.protocol}, user_groups {self.user_groups}"
            )
        if self.dp_noise_multiplier > 0 and self.aggregation != "secure":
            raise ValueError("dp_noise_multiplier > 0 needs aggregation secure")
        return self

    def params(self) -> dict[str, Any]:
        """``model_dump()`` without ``channel`` when it is the default channel: what identifies
        a session in result files and sweep cell keys, unchanged for default channels."""
        data = self.model_dump()
        if self.channel.is_default:
            data.pop("channel")
        if self.aggregation == "plain":  # as before the field existed
            data.pop("aggregation")
        if self.wire_precision == "native":  # as before the field existed
            data.pop("wire_precision")
        if self.dp_noise_multiplier == 0:  # no differential privacy: as before the fields
            for key in ("dp_noise_multiplier", "dp_clip", "dp_delta"):
                data.pop(key)
        return data

    @property
    def symbols(self) -> int:
        """K N_T: complex symbols transmitted per data point."""
        return self.channel_uses * self.antennas_tx
