"""Conversion between numpy arrays and the proto ``Matrix`` message, and message framing.

Arrays travel as little-endian row-major bytes with their shape and dtype; complex64 is
8 bytes per element (interleaved real, imaginary float32). Payload byte counts are taken on the
serialized messages, so every transport reports the same figure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from semalign.common.errors import ProtocolError
from semalign.proto import semalign_pb2 as pb

PROTOCOL_VERSION = 2
#: Most dimensions a Matrix may have (every protocol matrix has 2; ids and shapes have 1).
MAX_NDIM = 4
#: Largest single dimension a Matrix may declare (the byte count bounds the product anyway).
MAX_DIM = 1 << 31

_TO_NUMPY = {
    pb.COMPLEX64: np.dtype("<c8"),
    pb.COMPLEX128: np.dtype("<c16"),
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.INT64: np.dtype("<i8"),
    pb.INT32: np.dtype("<i4"),
    pb.UINT16: np.dtype("<u2"),
    pb.UINT64: np.dtype("<u8"),
}
_FROM_NUMPY = {dtype: code for code, dtype in _TO_NUMPY.items()}


def to_matrix(array: np.ndarray, dtype: str | np.dtype | None = None) -> pb.Matrix:
    """Encode ``array`` (optionally cast to ``dtype``, e.g. "complex64") as a new proto Matrix.

    For a large matrix that goes into a message, :func:`fill_matrix` on the message's own field
    avoids the copy protobuf makes when a finished Matrix is assigned to a field.
    """
    return fill_matrix(pb.Matrix(), array, dtype)


def fill_matrix(
    target: pb.Matrix, array: np.ndarray, dtype: str | np.dtype | None = None
) -> pb.Matrix:
    """Write ``array`` (optionally cast to ``dtype``) into ``target`` in place; returns it.

    ``target`` is usually a field of the message under construction (``msg.upload.p``): its
    bytes are then copied once from the array, never again between nested messages. The
    serialized result is byte for byte that of :func:`to_matrix`.
    """
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    code = _FROM_NUMPY.get(arr.dtype.newbyteorder("<"))
    if code is None:
        raise ProtocolError(f"dtype {arr.dtype} cannot be sent")
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    target.shape[:] = list(arr.shape)
    target.dtype = code
    target.data = data
    return target


def _shape(message: pb.Matrix) -> tuple[int, ...]:
    if len(message.shape) > MAX_NDIM:
        raise ProtocolError(f"matrix with {len(message.shape)} dimensions (at most {MAX_NDIM})")
    shape = tuple(int(s) for s in message.shape)
    if any(s > MAX_DIM for s in shape):
        raise ProtocolError(f"matrix dimension {max(shape)} too large (at most {MAX_DIM})")
    return shape


def from_matrix(message: pb.Matrix) -> np.ndarray:
    """Decode a proto Matrix into a new writable array; checks that the byte count matches
    shape and dtype.

    Every failure is a ProtocolError: unknown dtype code, too many or too large dimensions,
    or a byte count that does not match (computed without overflow).
    """
    return view_matrix(message).copy()


def view_matrix(message: pb.Matrix, dtype: str | np.dtype | None = None) -> np.ndarray:
    """Decode a proto Matrix without copying: a read-only view of the message's bytes.

    Validated as :func:`from_matrix` (dtype code, dimensions, byte count). With ``dtype`` the
    view is converted (one copy, none if it already has that dtype): the one conversion a
    large message needs, e.g. complex64 symbols to complex128 arithmetic.
    """
    wire_dtype = _TO_NUMPY.get(message.dtype)
    if wire_dtype is None:
        raise ProtocolError(f"unknown matrix dtype code {message.dtype}")
    shape = _shape(message)
    data = message.data
    expected = math.prod(shape) * wire_dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(f"matrix {shape} {wire_dtype} needs {expected} bytes, got {len(data)}")
    view = np.frombuffer(data, dtype=wire_dtype).reshape(shape)
    return view if dtype is None else view.astype(dtype, copy=False)


def check_matrix(
    message: pb.Matrix,
    what: str,
    shape: tuple[int, ...],
    dtypes: Iterable[int] = (pb.COMPLEX64, pb.COMPLEX128),
    *,
    finite: bool = True,
    copy: bool = True,
) -> np.ndarray:
    """Decode ``message`` if it has exactly ``shape`` and one of ``dtypes`` (proto codes), and
    (``finite``) no NaN or infinity; ProtocolError naming ``what`` otherwise.

    Shape and dtype are checked on the header, before any data is copied. ``copy=False``:
    a read-only view of the message's bytes (:func:`view_matrix`), no copy at all.
    """
    allowed = tuple(dtypes)
    if message.dtype not in allowed:
        names = "/".join(pb.DType.Name(code) for code in allowed)
        got = pb.DType.Name(message.dtype) if message.dtype in pb.DType.values() else "unknown"
        raise ProtocolError(f"{what}: dtype {got} ({message.dtype}), expected {names}")
    got_shape = _shape(message)
    if got_shape != tuple(shape):
        raise ProtocolError(f"{what}: shape {got_shape}, expected {tuple(shape)}")
    try:
        array = from_matrix(message) if copy else view_matrix(message)
    except ProtocolError as exc:
        raise ProtocolError(f"{what}: {exc}") from None
    if finite and array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        raise ProtocolError(f"{what} contains NaN or infinite values")
    return array


def matrix_payload_bytes(message: pb.Matrix) -> int:
    """Bytes of array data in a Matrix (excluding shape/dtype framing)."""
    return len(message.data)


def parse_user_message(data: bytes) -> pb.UserMessage:
    msg = pb.UserMessage()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError
        raise ProtocolError(f"cannot parse user message: {exc}") from exc
    return msg


def parse_ap_message(data: bytes) -> pb.ApMessage:
    msg = pb.ApMessage()
    try:
        msg.ParseFromString(data)
    except Exception as exc:
        raise ProtocolError(f"cannot parse AP message: {exc}") from exc
    return msg
