"""Per-user SNR: one value for all, an explicit list, or log-distance path loss.

Every SNR here is per receive antenna, in dB, for the AP at full power P_T, so user l's noise
variance is sigma_l^2 = (P_T / K) / 10^(SNR_l / 10) (see :mod:`.base`). The fading models keep
E|[Hbar]_{ij}|^2 = 1; large-scale loss lives only in SNR_l.

Log-distance path loss:

    SNR_l = SNR_ref - 10 n log10(d_l / d_ref)      [dB]

with d_l the AP-user distance (metres, > 0), d_ref the reference distance (metres, > 0, default
1 m) at which the SNR is SNR_ref (dB), and n the path-loss exponent (dimensionless, (0, 10],
default 3: 2 is free space, about 2.7-3.5 urban cellular, up to about 6 indoors through walls).
Each decade of distance costs 10 n dB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .base import SNR_DB_MAX, SNR_DB_MIN, check_range

#: Default reference distance d_ref, metres.
REFERENCE_DISTANCE = 1.0
#: Default path-loss exponent n.
PATH_LOSS_EXPONENT = 3.0


def path_loss_snr_db(
    distances: Sequence[float],
    snr_ref_db: float,
    reference_distance: float = REFERENCE_DISTANCE,
    exponent: float = PATH_LOSS_EXPONENT,
) -> tuple[float, ...]:
    """SNR_l = SNR_ref - 10 n log10(d_l / d_ref), one per distance.

    Args:
        distances: d_l in metres, each > 0 (length L, the number of users).
        snr_ref_db: SNR_ref in dB at ``reference_distance``.
        reference_distance: d_ref in metres, > 0.
        exponent: n, (0, 10].

    Returns:
        (L,) SNRs in dB, not range-checked (see :func:`user_snrs_db`).
    """
    if not reference_distance > 0 or not math.isfinite(reference_distance):
        raise ValueError(f"reference_distance must be > 0 metres, got {reference_distance!r}")
    check_range("path_loss_exponent", exponent, 0.0, 10.0, high_open=False)
    if exponent == 0:
        raise ValueError("path_loss_exponent must be > 0")
    out = []
    for d in distances:
        if not d > 0 or not math.isfinite(d):
            raise ValueError(f"distances must be > 0 metres, got {d!r}")
        out.append(float(snr_ref_db) - 10.0 * exponent * math.log10(d / reference_distance))
    return tuple(out)


def user_snrs_db(
    num_users: int,
    default_snr_db: float,
    *,
    snr_db: Sequence[float] | None = None,
    distances: Sequence[float] | None = None,
    snr_ref_db: float | None = None,
    reference_distance: float = REFERENCE_DISTANCE,
    exponent: float = PATH_LOSS_EXPONENT,
) -> tuple[float, ...]:
    """One SNR (dB) per user, users in session order.

    Exactly one source applies: ``snr_db`` (an explicit list), ``distances`` (path loss, with
    SNR_ref = ``snr_ref_db`` or ``default_snr_db`` when None), or neither (``default_snr_db``
    for every user: today's behaviour).

    Args:
        num_users: L, checked against the list's / distances' length.
        default_snr_db: the session's SNR, dB.

    Returns:
        (L,) SNRs in dB, each checked to lie in [-50, 100] dB.

    Raises:
        ValueError: a length that is not L, both sources given, or an SNR out of range.
    """
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if snr_db is not None and distances is not None:
        raise ValueError("give per-user SNRs or distances, not both")
    if snr_db is not None:
        values, source = tuple(float(s) for s in snr_db), "user_snr_db"
    elif distances is not None:
        ref = default_snr_db if snr_ref_db is None else snr_ref_db
        values = path_loss_snr_db(distances, ref, reference_distance, exponent)
        source = "distances"
    else:
        values, source = (float(default_snr_db),) * num_users, "snr_db"
    if len(values) != num_users:
        raise ValueError(f"{source} has {len(values)} entries for {num_users} users")
    for index, value in enumerate(values):
        if not (math.isfinite(value) and SNR_DB_MIN <= value <= SNR_DB_MAX):
            raise ValueError(
                f"user {index}: SNR {value:.4g} dB (from {source}) is outside "
                f"[{SNR_DB_MIN:g}, {SNR_DB_MAX:g}] dB"
            )
    return values
