"""Conversion between numpy arrays and the proto ``Matrix`` message, and message framing.

Arrays travel as little-endian row-major bytes with their shape and dtype; complex64 is
8 bytes per element (interleaved real, imaginary float32). Payload byte counts are taken on the
serialized messages, so every transport reports the same figure.

Two ways to send fewer bytes, both decoded here, so a receiver sees the arrays it always saw:

* layout ``HERMITIAN`` (:func:`pack_hermitian`): a square Hermitian matrix (real: symmetric)
  sends its upper triangle only, the diagonal's real parts first: s^2 real numbers instead of
  2 s^2 (complex), s (s + 1) / 2 instead of s^2 (real). Lossless for an exactly Hermitian
  matrix, which is what the senders pack: A_l = (G_l H_l)^H (G_l H_l) in every upload and
  B = X X^H in the compact handshake.
* a 16-bit element type (:mod:`semalign.common.half_precision`: float16 or bfloat16, complex as
  interleaved pairs, with a power-of-two exponent per matrix), the session's
  :class:`WireFormat` when its ``wire_precision`` is not ``native``; decoded to float32 /
  complex64, from which the receivers convert to their working precision as before.

Every decoding failure is a :class:`~semalign.common.errors.ProtocolError` that names what
does not fit (dtype, layout, exponent, byte count against the declared shape): the session
drops the sender with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from semalign.common import half_precision
from semalign.common.errors import ProtocolError
from semalign.proto import semalign_pb2 as pb

#: 3: A_l and B = X X^H travel Hermitian-packed, 16-bit wire precisions (2: native dense only).
PROTOCOL_VERSION = 3
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
#: 16-bit codes -> (format, complex); and back
_HALF = {
    pb.FLOAT16: ("float16", False),
    pb.BFLOAT16: ("bfloat16", False),
    pb.COMPLEX_FLOAT16: ("float16", True),
    pb.COMPLEX_BFLOAT16: ("bfloat16", True),
}
_HALF_CODES = {spec: code for code, spec in _HALF.items()}
#: ``wire_precision`` names and their HandshakeAccept codes (UNSPECIFIED reads as native)
WIRE_PRECISIONS: dict[str, int] = {
    "native": pb.WIRE_NATIVE,
    "float16": pb.WIRE_FLOAT16,
    "bfloat16": pb.WIRE_BFLOAT16,
}


def wire_precision_code(name: str) -> int:
    """The HandshakeAccept code of a ``wire_precision`` name (native: UNSPECIFIED, so a native
    accept is byte for byte what it was before the field)."""
    if name not in WIRE_PRECISIONS:
        raise ProtocolError(f"unknown wire precision {name!r}")
    return pb.WIRE_PRECISION_UNSPECIFIED if name == "native" else WIRE_PRECISIONS[name]


def wire_precision_name(code: int) -> str:
    """The ``wire_precision`` a HandshakeAccept announces (ProtocolError for an unknown code)."""
    if code == pb.WIRE_PRECISION_UNSPECIFIED:
        return "native"
    for name, known in WIRE_PRECISIONS.items():
        if known == code:
            return name
    raise ProtocolError(f"unknown wire precision code {code}")


# ---------------------------------------------------------------------------- Hermitian layout
def packed_count(size: int, is_complex: bool) -> int:
    """Real numbers of an s x s Hermitian matrix packed (:func:`pack_hermitian`): s^2 complex,
    s (s + 1) / 2 real."""
    return size * size if is_complex else size * (size + 1) // 2


def pack_hermitian(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a Hermitian (s, s) ``matrix`` as real numbers (1-D, in the
    matrix's real precision): the s diagonal entries' real parts, then the entries right of the
    diagonal row by row (np.triu_indices(s, 1) order), complex ones as (re, im) pairs.

    Raises:
        ProtocolError: not square, not float or complex, or not Hermitian to 1e-6 of its
            largest entry (its lower triangle would be lost).
    """
    a = np.asarray(matrix)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.dtype.kind not in "fc":
        raise ProtocolError(f"a Hermitian layout needs a square float matrix, got {a.shape}")
    scale = float(np.max(np.abs(a), initial=0.0))
    if np.max(np.abs(a - a.conj().T), initial=0.0) > 1e-6 * scale:
        raise ProtocolError("a matrix sent in the Hermitian layout is not Hermitian")
    rows, cols = np.triu_indices(a.shape[0], 1)
    upper = np.ascontiguousarray(a[rows, cols])
    real = np.finfo(a.dtype).dtype  # float32 for complex64
    parts = upper.view(real) if a.dtype.kind == "c" else upper
    return np.concatenate([np.real(np.diagonal(a)).astype(real), parts])


def unpack_hermitian(values: np.ndarray, size: int, is_complex: bool) -> np.ndarray:
    """Inverse of :func:`pack_hermitian`: the (size, size) Hermitian (real: symmetric) matrix
    of ``values`` (1-D reals, :func:`packed_count` of them), in their precision. Non-finite
    values are unpacked silently: :func:`check_matrix` refuses them, naming the matrix."""
    values = np.asarray(values)
    kind = np.result_type(values.dtype, np.complex64) if is_complex else values.dtype
    out = np.zeros((size, size), dtype=kind)
    rows, cols = np.triu_indices(size, 1)
    upper = values[size:]
    if is_complex:
        upper = np.ascontiguousarray(upper).view(kind)
    out[rows, cols] = upper
    with np.errstate(invalid="ignore"):  # NaN or inf in a payload: the receiver refuses it
        out = out + out.conj().T
        out[np.diag_indices(size)] = values[:size]
    return out


def to_matrix(
    array: np.ndarray,
    dtype: str | np.dtype | None = None,
    *,
    precision: str = "native",
    hermitian: bool = False,
) -> pb.Matrix:
    """Encode ``array`` (optionally cast to ``dtype``, e.g. "complex64") as a new proto Matrix
    (``precision`` and ``hermitian``: :func:`fill_matrix`).

    For a large matrix that goes into a message, :func:`fill_matrix` on the message's own field
    avoids the copy protobuf makes when a finished Matrix is assigned to a field.
    """
    return fill_matrix(pb.Matrix(), array, dtype, precision=precision, hermitian=hermitian)


def fill_matrix(
    target: pb.Matrix,
    array: np.ndarray,
    dtype: str | np.dtype | None = None,
    *,
    precision: str = "native",
    hermitian: bool = False,
) -> pb.Matrix:
    """Write ``array`` (optionally cast to ``dtype``) into ``target`` in place; returns it.

    ``target`` is usually a field of the message under construction (``msg.upload.p``): its
    bytes are then copied once from the array, never again between nested messages. The
    serialized result is byte for byte that of :func:`to_matrix`.

    ``hermitian``: a square Hermitian matrix, sent as its upper triangle (layout HERMITIAN,
    :func:`pack_hermitian`). ``precision`` "float16" or "bfloat16": a float or complex array
    sent as 16-bit numbers with a block exponent (``dtype`` then only says real or complex;
    the values are rounded once, from the array's own precision).
    """
    arr = np.asarray(array)
    if precision != "native":
        return _fill_half(target, arr, dtype, precision, hermitian)
    if dtype is not None:
        arr = arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False)
    code = _FROM_NUMPY.get(arr.dtype.newbyteorder("<"))
    if code is None:
        raise ProtocolError(f"dtype {arr.dtype} cannot be sent")
    body = pack_hermitian(arr) if hermitian else arr
    data = np.ascontiguousarray(body, dtype=body.dtype.newbyteorder("<")).tobytes()
    target.shape[:] = list(arr.shape)
    target.dtype = code
    target.data = data
    target.layout = pb.HERMITIAN if hermitian else pb.DENSE
    return target


def _fill_half(
    target: pb.Matrix, arr: np.ndarray, dtype, precision: str, hermitian: bool
) -> pb.Matrix:
    """:func:`fill_matrix` at a 16-bit ``precision``."""
    kind = np.dtype(dtype).kind if dtype is not None else arr.dtype.kind
    if kind not in "fc" or arr.dtype.kind not in "fc" or (arr.dtype.kind, kind) == ("c", "f"):
        raise ProtocolError(f"{arr.dtype} values cannot travel as {precision} {dtype or ''}")
    is_complex = kind == "c"
    arr = arr.astype(np.complex128 if is_complex else np.float64, copy=False)
    if hermitian:
        values = pack_hermitian(arr)
    else:
        values = np.ascontiguousarray(arr).view(np.float64) if is_complex else arr
    data, exponent = half_precision.encode(values, precision)  # type: ignore[arg-type]
    target.shape[:] = list(arr.shape)
    target.dtype = _HALF_CODES[precision, is_complex]
    target.data = data
    target.layout = pb.HERMITIAN if hermitian else pb.DENSE
    target.exponent = exponent
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
    shape, dtype and layout.

    Every failure is a ProtocolError: unknown dtype code or layout, too many or too large
    dimensions, a Hermitian layout that is not square, an exponent on a full-precision matrix,
    or a byte count that does not match (computed without overflow).
    """
    return view_matrix(message).copy()


def view_matrix(message: pb.Matrix, dtype: str | np.dtype | None = None) -> np.ndarray:
    """Decode a proto Matrix without copying: a read-only view of the message's bytes.

    Validated as :func:`from_matrix` (dtype code, layout, dimensions, byte count). With
    ``dtype`` the view is converted (one copy, none if it already has that dtype): the one
    conversion a large message needs, e.g. complex64 symbols to complex128 arithmetic. A
    packed or 16-bit matrix is decoded into a new array (float32 / complex64 for 16 bits).
    """
    half = _HALF.get(message.dtype)
    wire_dtype = _TO_NUMPY.get(message.dtype)
    if half is None and wire_dtype is None:
        raise ProtocolError(f"unknown matrix dtype code {message.dtype}")
    if message.layout not in (pb.DENSE, pb.HERMITIAN):
        raise ProtocolError(f"unknown matrix layout code {message.layout}")
    if message.exponent and half is None:
        raise ProtocolError(f"exponent {message.exponent} on a {wire_dtype} matrix")
    shape = _shape(message)
    data = message.data
    if half is None and message.layout == pb.DENSE:  # the common case: a view of the bytes
        expected = dense_bytes(shape, message.dtype)
        if len(data) != expected:
            raise ProtocolError(
                f"matrix {shape} {wire_dtype} needs {expected} bytes, got {len(data)}"
            )
        view = np.frombuffer(data, dtype=wire_dtype).reshape(shape)
        return view if dtype is None else view.astype(dtype, copy=False)
    array = _decode_components(message, shape, half, wire_dtype)
    return array if dtype is None else array.astype(dtype, copy=False)


def _decode_components(
    message: pb.Matrix, shape: tuple[int, ...], half: tuple[str, bool] | None, wire_dtype
) -> np.ndarray:
    """A packed or 16-bit Matrix decoded: its real numbers counted against the shape, then
    decoded and unpacked."""
    is_complex = half[1] if half is not None else wire_dtype.kind == "c"
    hermitian = message.layout == pb.HERMITIAN
    if hermitian:
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ProtocolError(f"Hermitian layout of a matrix {shape}, which is not square")
        if half is None and wire_dtype.kind not in "fc":
            raise ProtocolError(f"Hermitian layout of a {wire_dtype} matrix")
        count = packed_count(shape[0], is_complex)
    else:
        count = math.prod(shape) * (2 if is_complex else 1)
    size = 2 if half is not None else wire_dtype.itemsize // (2 if is_complex else 1)
    name = f"{half[0]}{' complex' if is_complex else ''}" if half else str(wire_dtype)
    layout = " Hermitian-packed" if hermitian else ""
    if len(message.data) != count * size:
        raise ProtocolError(
            f"matrix {shape} {name}{layout} needs {count * size} bytes, got {len(message.data)}"
        )
    if half is not None:
        values = half_precision.decode(message.data, half[0], message.exponent)  # type: ignore[arg-type]
    else:
        values = np.frombuffer(message.data, dtype=np.finfo(wire_dtype).dtype.newbyteorder("<"))
    if hermitian:
        return unpack_hermitian(values, shape[0], is_complex)
    complex_kind = np.result_type(values.dtype, np.complex64)
    return (values.view(complex_kind) if is_complex else values).reshape(shape)


def check_matrix(
    message: pb.Matrix,
    what: str,
    shape: tuple[int, ...],
    dtypes: Iterable[int] = (pb.COMPLEX64, pb.COMPLEX128),
    *,
    finite: bool = True,
    copy: bool = True,
    layouts: Iterable[int] = (pb.DENSE,),
) -> np.ndarray:
    """Decode ``message`` if it has exactly ``shape``, one of ``dtypes`` (proto codes) and one
    of ``layouts``, and (``finite``) no NaN or infinity; ProtocolError naming ``what``
    otherwise.

    Shape, dtype and layout are checked on the header, before any data is copied.
    ``copy=False``: a read-only view of the message's bytes (:func:`view_matrix`), no copy at
    all.
    """
    allowed = tuple(dtypes)
    if message.dtype not in allowed:
        names = "/".join(pb.DType.Name(code) for code in allowed)
        got = pb.DType.Name(message.dtype) if message.dtype in pb.DType.values() else "unknown"
        raise ProtocolError(f"{what}: dtype {got} ({message.dtype}), expected {names}")
    forms = tuple(layouts)
    if message.layout not in forms:
        names = "/".join(pb.Layout.Name(code) for code in forms)
        got = pb.Layout.Name(message.layout) if message.layout in pb.Layout.values() else "unknown"
        raise ProtocolError(f"{what}: layout {got} ({message.layout}), expected {names}")
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


@dataclass(frozen=True)
class WireFormat:
    """How a session's float matrices travel (features, symbols, F, the users' uploads).

    Attributes:
        real: real matrices (the widely-linear representation: float32 at native precision),
            else complex (complex64).
        precision: ``native`` (4 bytes a real number) or a 16-bit format of
            :mod:`semalign.common.half_precision` (2 bytes), as the HandshakeAccept announces.

    The matrices that travel in double precision by design (B = X X^H, Z - U) and the
    baselines' whitening and precoder do not use it.
    """

    real: bool = False
    precision: str = "native"

    def __post_init__(self) -> None:
        if self.precision not in WIRE_PRECISIONS:
            raise ProtocolError(
                f"unknown wire precision {self.precision!r} (known: {', '.join(WIRE_PRECISIONS)})"
            )

    @property
    def dtype(self) -> str:
        """The numpy dtype of a matrix at native precision: float32 or complex64."""
        return "float32" if self.real else "complex64"

    @property
    def double_dtype(self) -> str:
        """The numpy dtype of the matrices that travel in double precision by design (B = X X^H,
        Z - U), whatever :attr:`precision`: float64 or complex128."""
        return "float64" if self.real else "complex128"

    def to_wire(self, array: np.ndarray) -> np.ndarray:
        """``array`` as it travels: its real part when ``real`` (the imaginary part is zero up
        to rounding), the array itself otherwise."""
        return np.real(array) if self.real else array

    @property
    def codes(self) -> tuple[int, ...]:
        """The proto codes a receiver accepts: native single and double precision (single
        first), or the one 16-bit code of the precision."""
        if self.precision != "native":
            return (_HALF_CODES[self.precision, not self.real],)
        if self.real:
            return (pb.FLOAT32, pb.FLOAT64)
        return (pb.COMPLEX64, pb.COMPLEX128)

    def fill(self, target: pb.Matrix, array: np.ndarray, *, hermitian: bool = False) -> pb.Matrix:
        """Write ``array`` into ``target`` in this format (its real part when ``real``: the
        imaginary part is zero up to rounding); ``hermitian``: the packed upper triangle."""
        return fill_matrix(
            target, self.to_wire(array), self.dtype, precision=self.precision, hermitian=hermitian
        )

    def matrix(self, array: np.ndarray, *, hermitian: bool = False) -> pb.Matrix:
        """``array`` as a new Matrix in this format (:meth:`fill`)."""
        return self.fill(pb.Matrix(), array, hermitian=hermitian)

    def double_matrix(self, array: np.ndarray, *, hermitian: bool = False) -> pb.Matrix:
        """``array`` as a new Matrix of :attr:`double_dtype` (B = X X^H; ``hermitian``: the
        packed upper triangle)."""
        return to_matrix(self.to_wire(array), self.double_dtype, hermitian=hermitian)


def matrix_payload_bytes(message: pb.Matrix) -> int:
    """Bytes of array data in a Matrix (excluding shape/dtype framing)."""
    return len(message.data)


def dense_bytes(shape: Iterable[int], dtype: int) -> int:
    """Bytes of data a DENSE Matrix of ``shape`` and element type ``dtype`` (a proto code)
    carries: 2 a real number at 16 bits, the numpy item size otherwise (ProtocolError for an
    unknown code). What a receiver holds a declared size against before any data arrives."""
    half = _HALF.get(dtype)
    if half is not None:
        size = 4 if half[1] else 2
    elif dtype in _TO_NUMPY:
        size = _TO_NUMPY[dtype].itemsize
    else:
        raise ProtocolError(f"unknown matrix dtype code {dtype}")
    return math.prod(int(s) for s in shape) * size


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
