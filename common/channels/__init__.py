"""Channel models for the AP -> user MIMO links, as a small interface (pure numpy).

One concept per module:

* :mod:`.base`: :class:`ChannelRealization` (truth ``hbar``, ``estimate``, ``snr_db``) and the
  :class:`Fading` interface; conventions (shapes, units, SNR per receive antenna).
* :mod:`.rayleigh`, :mod:`.kronecker`, :mod:`.rician`: fading laws of Hbar (unit entry power).
* :mod:`.csi`: imperfect CSI, Hhat = Hbar + E.
* :mod:`.link`: one realized link: H = I_K (x) Hbar, the noise variance of an SNR, and
  :class:`BlockFadingLink` applying both to transmitted symbols.
* :mod:`.snr`: per-user SNR (explicit or log-distance path loss).
* :mod:`.model`: :class:`ChannelModel` = fading + CSI + SNR, ``draw(N_R, N_T, rng)``.
* :mod:`.registry`: models by name, :func:`channel_from_config`.
* :mod:`.config`: :class:`ChannelConfig`, the pydantic field for the session config.

Typical use (one user)::

    link = ChannelConfig(model="kronecker", rho_tx=0.5).user_model(ordinal, users, snr_db)
    real = link.draw(antennas_rx, antennas_tx, np.random.default_rng((seed, ordinal)))
    real.hbar      # transmit through this
    real.estimate  # design F / G_l with this
"""

from __future__ import annotations

from .base import ChannelRealization, Fading, complex_normal
from .config import ChannelConfig
from .csi import PERFECT_CSI, CsiError
from .kronecker import Kronecker, exponential_correlation
from .link import BlockFadingLink, block_channel, complex_noise, noise_variance
from .model import ChannelModel
from .rayleigh import Rayleigh, rayleigh_matrix
from .registry import FADING_MODELS, channel_from_config, fading_from_config
from .rician import Rician, k_factor_from_db, ula_steering
from .snr import path_loss_snr_db, user_snrs_db

__all__ = [
    "BlockFadingLink",
    "FADING_MODELS",
    "PERFECT_CSI",
    "ChannelConfig",
    "ChannelModel",
    "ChannelRealization",
    "CsiError",
    "Fading",
    "Kronecker",
    "Rayleigh",
    "block_channel",
    "complex_noise",
    "noise_variance",
    "rayleigh_matrix",
    "Rician",
    "channel_from_config",
    "complex_normal",
    "exponential_correlation",
    "fading_from_config",
    "k_factor_from_db",
    "path_loss_snr_db",
    "ula_steering",
    "user_snrs_db",
]
