"""The 16-bit number formats of the reduced wire precision: float16 and bfloat16.

Both keep 2 bytes of a real number (a complex one is an interleaved (re, im) pair):

* ``float16``: IEEE 754 binary16, 11 significant bits (unit roundoff u = 2^-11), largest
  finite value 65,504, normal down to 2^-14;
* ``bfloat16``: the top 16 bits of a float32 (:func:`to_bfloat16`), 8 significant bits
  (u = 2^-8) and float32's range.

A block of values travels with one power-of-two exponent e (:func:`block_exponent`): the
stored values are x 2^-e, and x = stored 2^e exactly on receipt (a power of two only moves the
exponent). For float16, e puts the largest magnitude in [2^14, 2^15): no value overflows, and
the smallest normal is 2^-29 of the largest, whatever the block's scale (the per-round
statistics of the compact protocol grow with the pilot count n; B = X X^H has n on its
diagonal). bfloat16 has float32's range and needs no exponent (e = 0).

Every value encoded is rounded to nearest (ties to even), so its relative error is at most u
(float16 below 2^-29 of the block's largest: at most 2^-25 2^e absolute). NaN and infinity are
refused where they would enter (:func:`encode`) and where they would leave (:func:`decode`):
an honest peer never sends them.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from semalign.common.errors import ProtocolError

#: The reduced precisions (``AlignmentConfig.wire_precision`` adds ``native``).
HalfFormat = Literal["float16", "bfloat16"]
HALF_FORMATS: tuple[str, ...] = get_args(HalfFormat)
#: Unit roundoff of each format: the largest relative error of one rounding.
UNIT_ROUNDOFF: dict[str, float] = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
#: The binary exponent float16 blocks are scaled to: the largest magnitude below 2^15.
FLOAT16_TOP = 15
#: Largest |exponent| a received block may declare (honest blocks stay far inside).
MAX_EXPONENT = 256


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16, same shape) of finite real ``values``.

    The value is taken as float32 (a float64 input is rounded to float32 first, as the native
    wire does) and its top 16 bits are kept, rounded to nearest with ties to even: add
    0x7FFF plus the lowest kept bit, then shift. Relative error at most 2^-8 (2^-8 + 2^-24
    from float64).

    Raises:
        ProtocolError: a NaN or infinite value, or one beyond bfloat16's largest finite value
            (about 3.39e38) after rounding.
    """
    single = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(single)):
        raise ProtocolError("bfloat16: cannot encode NaN or infinite values")
    with np.errstate(over="ignore"):
        bits = np.ascontiguousarray(single, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    out = rounded.astype(np.uint16)
    if np.any((out & 0x7F80) == 0x7F80):
        raise ProtocolError("bfloat16: a value beyond the largest finite bfloat16")
    return out


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    """float32 values (same shape) of bfloat16 bit patterns ``bits`` (uint16): exact.

    Raises:
        ProtocolError: a NaN or infinite pattern (exponent bits all ones).
    """
    patterns = np.asarray(bits, dtype=np.uint16)
    if np.any((patterns & 0x7F80) == 0x7F80):
        raise ProtocolError("bfloat16: NaN or infinite value received")
    return (patterns.astype(np.uint32) << 16).view(np.float32)


def block_exponent(values: np.ndarray, fmt: HalfFormat) -> int:
    """The exponent e of a block of finite real ``values`` in format ``fmt``: for float16 the
    one that puts max |x| 2^-e in [2^14, 2^15) (0 for an all-zero block, at least
    -:data:`MAX_EXPONENT`), for bfloat16 0."""
    if fmt == "bfloat16" or values.size == 0:
        return 0
    largest = float(np.max(np.abs(values)))
    if largest == 0.0:
        return 0
    # a block below 2^-(MAX_EXPONENT - 15) is kept at -MAX_EXPONENT: it rounds to zero
    return max(int(np.frexp(largest)[1]) - FLOAT16_TOP, -MAX_EXPONENT)


def encode(values: np.ndarray, fmt: HalfFormat) -> tuple[bytes, int]:
    """Finite real ``values`` (any shape, float32 or float64) as little-endian 16-bit
    ``fmt`` bytes, row-major, and the block's exponent e (:func:`block_exponent`).

    Raises:
        ProtocolError: NaN or infinite values, or an unknown format.
    """
    if fmt not in HALF_FORMATS:
        raise ProtocolError(f"unknown 16-bit format {fmt!r} (known: {', '.join(HALF_FORMATS)})")
    real = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(real)):
        raise ProtocolError(f"{fmt}: cannot encode NaN or infinite values")
    exponent = block_exponent(real, fmt)
    scaled = np.ldexp(real, -exponent) if exponent else real
    if fmt == "float16":
        half = np.ascontiguousarray(scaled, dtype="<f2")  # round to nearest even, no overflow
    else:
        half = to_bfloat16(scaled).astype("<u2")
    return half.tobytes(), exponent


def decode(data: bytes, fmt: HalfFormat, exponent: int) -> np.ndarray:
    """The float32 values (1-D) of ``fmt`` bytes times 2^``exponent`` (exact unless the
    product leaves float32's range, which the receiver's finiteness check then refuses).

    Raises:
        ProtocolError: an odd byte count, an exponent beyond +-:data:`MAX_EXPONENT` (or any
            but 0 for bfloat16, which :func:`block_exponent` never scales), or a NaN or
            infinite value.
    """
    if fmt not in HALF_FORMATS:
        raise ProtocolError(f"unknown 16-bit format {fmt!r}")
    if len(data) % 2:
        raise ProtocolError(f"{fmt}: {len(data)} bytes is not a whole number of values")
    if abs(exponent) > MAX_EXPONENT:
        raise ProtocolError(f"{fmt}: exponent {exponent} beyond +-{MAX_EXPONENT}")
    if fmt == "bfloat16" and exponent:  # its range is float32's: block_exponent gives 0
        raise ProtocolError(
            f"bfloat16: exponent {exponent}, expected 0 (bfloat16 blocks are unscaled)"
        )
    if fmt == "float16":
        values = np.frombuffer(data, dtype="<f2").astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise ProtocolError("float16: NaN or infinite value received")
    else:
        values = from_bfloat16(np.frombuffer(data, dtype="<u2"))
    if exponent:
        with np.errstate(over="ignore"):
            values = np.ldexp(values, exponent).astype(np.float32)
    return values
