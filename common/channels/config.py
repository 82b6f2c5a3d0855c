"""``ChannelConfig``: the validated, JSON-serializable description of the users' channels.

Flat on purpose: every field is a scalar, a tuple or None, so the config is hashable, dumps to
JSON, can be one field of the session config (``channel``) and each field can be a sweep axis
or a CSV column. The default is today's channel (i.i.d. Rayleigh, perfect CSI, the session's
SNR for every user) and draws exactly the same numbers.

Fields by role (a parameter given for a model or SNR source that does not use it is an error,
so two configs that differ always describe different channels):

* fading ``model``: ``rayleigh`` | ``kronecker`` (``rho_tx``, ``rho_rx`` in [0, 1); at least
  one; an unset one is 0) | ``rician`` (``k_factor`` >= 0 LINEAR, required; ``aod_deg``,
  ``aoa_deg`` in [-90, 90] degrees, unset: uniform per user).
* ``csi_error_variance``: sigma_e^2 in [0, 10], linear, per entry (0: perfect CSI).
* per-user SNR, at most one source: ``user_snr_db`` (dB, one per user, in [-50, 100]) or
  ``distances`` (metres, > 0, one per user) with ``snr_ref_db`` (dB at ``reference_distance``;
  unset: the session's ``snr_db``), ``reference_distance`` (metres, > 0, unset: 1) and
  ``path_loss_exponent`` ((0, 10], unset: 3). Neither: the session's ``snr_db`` for all. The
  number of users is not known here: :meth:`ChannelConfig.user_snrs` checks the lengths.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import SNR_DB_MAX, SNR_DB_MIN, Fading
from .csi import ERROR_VARIANCE_MAX, CsiError
from .model import ChannelModel
from .registry import fading_from_config
from .rician import K_FACTOR_MAX
from .snr import PATH_LOSS_EXPONENT, REFERENCE_DISTANCE, user_snrs_db

FadingName = Literal["rayleigh", "kronecker", "rician"]
Correlation = Annotated[float, Field(ge=0.0, lt=1.0)]
Angle = Annotated[float, Field(ge=-90.0, le=90.0)]
Snr = Annotated[float, Field(ge=SNR_DB_MIN, le=SNR_DB_MAX)]
Distance = Annotated[float, Field(gt=0.0, le=1e7)]

#: field -> the fading model or SNR source that uses it.
_USED_BY: dict[str, tuple[str, str]] = {
    "rho_tx": ("model", "kronecker"),
    "rho_rx": ("model", "kronecker"),
    "k_factor": ("model", "rician"),
    "aod_deg": ("model", "rician"),
    "aoa_deg": ("model", "rician"),
    "snr_ref_db": ("distances", ""),
    "reference_distance": ("distances", ""),
    "path_loss_exponent": ("distances", ""),
}


class ChannelConfig(BaseModel):
    """Channel of every user in a session: fading law, CSI quality, per-user SNR."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: FadingName = Field("rayleigh", description="fading law of Hbar")
    rho_tx: Correlation | None = Field(None, description="kronecker: AP-side correlation")
    rho_rx: Correlation | None = Field(None, description="kronecker: user-side correlation")
    k_factor: float | None = Field(
        None, ge=0.0, le=K_FACTOR_MAX, description="rician: K-factor, linear (not dB)"
    )
    aod_deg: Angle | None = Field(None, description="rician: LOS departure angle, degrees")
    aoa_deg: Angle | None = Field(None, description="rician: LOS arrival angle, degrees")
    csi_error_variance: float = Field(
        0.0, ge=0.0, le=ERROR_VARIANCE_MAX, description="sigma_e^2 of Hhat = Hbar + E, linear"
    )
    user_snr_db: tuple[Snr, ...] | None = Field(
        None, min_length=1, description="SNR per user per receive antenna, dB"
    )
    distances: tuple[Distance, ...] | None = Field(
        None, min_length=1, description="AP-user distances, metres (log-distance path loss)"
    )
    snr_ref_db: Snr | None = Field(None, description="SNR at reference_distance, dB")
    reference_distance: float | None = Field(None, gt=0.0, description="d_ref, metres")
    path_loss_exponent: float | None = Field(None, gt=0.0, le=10.0, description="n")

    @model_validator(mode="after")
    def _check_roles(self) -> ChannelConfig:
        for name, (role, value) in _USED_BY.items():
            if getattr(self, name) is None:
                continue
            if role == "model" and self.model != value:
                raise ValueError(f"{name} applies to model {value!r} only, not {self.model!r}")
            if role == "distances" and self.distances is None:
                raise ValueError(f"{name} applies to the path-loss SNR only: give distances")
        if self.model == "kronecker" and self.rho_tx is None and self.rho_rx is None:
            raise ValueError("model 'kronecker' needs rho_tx and/or rho_rx in [0, 1)")
        if self.model == "rician" and self.k_factor is None:
            raise ValueError("model 'rician' needs k_factor (linear, >= 0)")
        if self.user_snr_db is not None and self.distances is not None:
            raise ValueError("give user_snr_db or distances, not both")
        return self

    # ------------------------------------------------------------------ builders
    def fading(self) -> Fading:
        """The fading law (a frozen dataclass from :mod:`.registry`)."""
        if self.model == "kronecker":
            return fading_from_config(
                "kronecker", rho_tx=self.rho_tx or 0.0, rho_rx=self.rho_rx or 0.0
            )
        if self.model == "rician":
            return fading_from_config(
                "rician", k_factor=self.k_factor, aod_deg=self.aod_deg, aoa_deg=self.aoa_deg
            )
        return fading_from_config(self.model)

    def csi(self) -> CsiError:
        """The CSI error model."""
        return CsiError(self.csi_error_variance)

    def user_snrs(self, num_users: int, default_snr_db: float) -> tuple[float, ...]:
        """One SNR (dB per receive antenna) per user, in session order.

        Args:
            num_users: L; ``user_snr_db`` / ``distances`` must have exactly L entries.
            default_snr_db: the session's ``snr_db`` (used for all users, or as SNR_ref).

        Raises:
            ValueError: wrong length, or a path-loss SNR outside [-50, 100] dB.
        """
        return user_snrs_db(
            num_users,
            default_snr_db,
            snr_db=self.user_snr_db,
            distances=self.distances,
            snr_ref_db=self.snr_ref_db,
            reference_distance=(
                REFERENCE_DISTANCE if self.reference_distance is None else self.reference_distance
            ),
            exponent=(
                PATH_LOSS_EXPONENT if self.path_loss_exponent is None else self.path_loss_exponent
            ),
        )

    def user_models(self, num_users: int, default_snr_db: float) -> tuple[ChannelModel, ...]:
        """One :class:`.ChannelModel` per user (same fading and CSI, that user's SNR)."""
        fading, csi = self.fading(), self.csi()
        return tuple(
            ChannelModel(fading, csi, snr) for snr in self.user_snrs(num_users, default_snr_db)
        )

    def user_model(self, ordinal: int, num_users: int, default_snr_db: float) -> ChannelModel:
        """User ``ordinal``'s (0-based) :class:`.ChannelModel`.

        With one SNR for every user any ordinal is served (a user does not need to know how
        many others there are); with per-user SNRs the ordinal must be one of ``num_users``.
        """
        if self.user_snr_db is None and self.distances is None and ordinal >= 0:
            return ChannelModel(self.fading(), self.csi(), float(default_snr_db))
        if not 0 <= ordinal < num_users:
            raise ValueError(f"user ordinal {ordinal} outside 0..{num_users - 1}")
        return self.user_models(num_users, default_snr_db)[ordinal]

    # ------------------------------------------------------------------ labels
    @property
    def is_default(self) -> bool:
        """True for today's channel (so a cell key can leave the field out and stay the same)."""
        return self == ChannelConfig()

    def describe(self) -> str:
        """Short label, e.g. ``kronecker(rho_tx=0.5,rho_rx=0) csi_err=0.1 d=[10,50]m n=3``."""
        params = [
            f"{name}={getattr(self, name):g}"
            for name in ("rho_tx", "rho_rx", "k_factor", "aod_deg", "aoa_deg")
            if getattr(self, name) is not None
        ]
        parts = [f"{self.model}({','.join(params)})" if params else self.model]
        if self.csi_error_variance:
            parts.append(f"csi_err={self.csi_error_variance:g}")
        if self.user_snr_db is not None:
            parts.append("snr=[" + ",".join(f"{s:g}" for s in self.user_snr_db) + "]dB")
        if self.distances is not None:
            n = PATH_LOSS_EXPONENT if self.path_loss_exponent is None else self.path_loss_exponent
            parts.append("d=[" + ",".join(f"{d:g}" for d in self.distances) + f"]m n={n:g}")
        return " ".join(parts)
