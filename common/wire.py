"""Conversion between numpy arrays and the proto ``Matrix`` message, and message framing.

Arrays travel as little-endian row-major bytes with their shape and dtype; complex64 is
8 bytes per element (interleaved real, imaginary float32). Payload byte counts are taken on the
serialized messages, so every transport reports the same figure.
"""

from __future__ import annotations

import math

import numpy as np
from semalign.common.errors import ProtocolError
from semalign.proto import semalign_pb2 as pb

PROTOCOL_VERSION = 1

_TO_NUMPY = {
    pb.COMPLEX64: np.dtype("<c8"),
    pb.COMPLEX128: np.dtype("<c16"),
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT64: np.dtype("<f8"),
    pb.INT64: np.dtype("<i8"),
    pb.INT32: np.dtype("<i4"),
    pb.UINT16: np.dtype("<u2"),
}
_FROM_NUMPY = {dtype: code for code, dtype in _TO_NUMPY.items()}


def to_matrix(array: np.ndarray, dtype: str | np.dtype | None = None) -> pb.Matrix:
    """Encode ``array`` (optionally cast to ``dtype``, e.g. "complex64") as a proto Matrix."""
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    code = _FROM_NUMPY.get(arr.dtype.newbyteorder("<"))
    if code is None:
        raise ProtocolError(f"dtype {arr.dtype} cannot be sent")
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return pb.Matrix(shape=list(arr.shape), dtype=code, data=data)


def from_matrix(message: pb.Matrix) -> np.ndarray:
    """Decode a proto Matrix into a new writable array; checks the byte count."""
    return view_matrix(message).copy()


def view_matrix(message: pb.Matrix, dtype: str | np.dtype | None = None) -> np.ndarray:
    """Decode a proto Matrix without copying: a read-only view of the message's bytes.

    With ``dtype`` the view is converted (one copy, none if it already has that dtype): the
    one conversion a large message needs, e.g. complex64 symbols to complex128 arithmetic.
    """
    wire_dtype = _TO_NUMPY.get(message.dtype)
    if wire_dtype is None:
        raise ProtocolError(f"unknown matrix dtype code {message.dtype}")
    shape = tuple(int(s) for s in message.shape)
    data = message.data
    expected = math.prod(shape) * wire_dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(f"matrix {shape} {wire_dtype} needs {expected} bytes, got {len(data)}")
    view = np.frombuffer(data, dtype=wire_dtype).reshape(shape)
    return view if dtype is None else view.astype(dtype, copy=False)


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
