"""Fading models by name, and a factory that builds a :class:`.ChannelModel` from plain values."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Fading
from .csi import CsiError
from .kronecker import Kronecker
from .model import ChannelModel
from .rayleigh import Rayleigh
from .rician import Rician

#: name -> fading class; the names of ``ChannelConfig.model``.
FADING_MODELS: dict[str, type[Fading]] = {cls.name: cls for cls in (Rayleigh, Kronecker, Rician)}


def fading_from_config(name: str, **params: Any) -> Fading:
    """The fading law ``name`` with its parameters.

    Names and parameters: ``rayleigh`` (none), ``kronecker`` (rho_tx, rho_rx in [0, 1)),
    ``rician`` (k_factor >= 0 linear, aod_deg, aoa_deg in [-90, 90] or None).

    Raises:
        ValueError: unknown name, a parameter the model does not take, or one out of range.
    """
    try:
        cls = FADING_MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown channel model {name!r}; choose one of {', '.join(FADING_MODELS)}"
        ) from None
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no parameters"
        raise ValueError(f"channel model {name!r} takes {takes}; got {', '.join(unknown)}")
    return cls(**params)


def channel_from_config(
    name: str = "rayleigh",
    *,
    snr_db: float = 20.0,
    csi_error_variance: float = 0.0,
    **params: Any,
) -> ChannelModel:
    """One user's :class:`.ChannelModel`: fading ``name`` with ``params``, CSI error, SNR.

    Args:
        name: ``rayleigh``, ``kronecker`` or ``rician`` (see :func:`fading_from_config`).
        snr_db: the user's SNR per receive antenna, dB.
        csi_error_variance: sigma_e^2 of the estimate Hhat = Hbar + E, linear, [0, 10].
        params: the fading model's parameters.

    Example: ``channel_from_config("kronecker", rho_tx=0.5, rho_rx=0.2, snr_db=10)``.
    """
    fading = fading_from_config(name, **params)
    return ChannelModel(fading, CsiError(csi_error_variance), snr_db)
