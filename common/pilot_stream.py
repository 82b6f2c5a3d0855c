"""The compact handshake's X in bounded chunks: cut at the AP, taken row block by row block by
the user.

In the compact round protocol the HandshakeAccept carries the AP's whitened pilots X (c, n):
(d/2) n complex64, 65 MB per user at d = 384, n = 42,500. Sent whole, the user can start on it
only once its last byte is in, so R = Y X^H (the user's one O(n) product) follows the transfer
instead of running beside it. A user that asks for it (over gRPC: its stream's metadata
``semalign-pilot-chunks``, the most bytes it takes in one chunk) gets instead:

1. the HandshakeAccept with X's header only (``pilots``: shape, dtype and exponent, no data)
   and ``pilot_stream``: X's data bytes in all, the number of chunks, the rows per chunk;
2. that many PilotChunk messages, in order, each with whole rows of X (chunk i: rows
   [i r, min((i + 1) r, c)) for r rows per chunk), no reply.

:class:`PilotSplitter` cuts an accept at the AP (the chunks of one X, the same for every user of
a session, are made once); :class:`PilotAssembly` takes them at the user, holding every
declaration against the accept's own (shape, dtype, total bytes, the user's chunk limit) and
every chunk against the declaration (index, session, exact byte count, finite values), and
hands each row block on decoded exactly as the whole X would have been: the user's
R[:, rows] = Y X[rows]^H are the columns of R = Y X^H. A stream that breaks its declaration (a
chunk out of order, beyond the declared count, of another size) is refused with a
:class:`~semalign.common.errors.ProtocolError` naming the difference; the user reports it, the
AP drops that user and the session goes on. Progress is logged, one line per tenth of X.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from semalign.common.errors import ProtocolError
from semalign.common.wire import check_matrix, dense_bytes, parse_ap_message
from semalign.proto import semalign_pb2 as pb

log = logging.getLogger(__name__)

#: Stream metadata key with which a user asks for X in chunks: the most bytes it takes in one.
CHUNKS_KEY = "semalign-pilot-chunks"
#: Most bytes of X in one chunk: what the AP sends at most, whatever a user asks for.
MAX_CHUNK_BYTES = 4 << 20
#: Least a user may ask for (smaller chunks: more messages than the overlap is worth).
MIN_CHUNK_BYTES = 64 << 10
#: X is cut into about this many chunks (fewer when a row block would exceed the limit): the
#: grain of the user's overlap of computation with the transfer, and of its progress lines.
TARGET_CHUNKS = 16


def requested_limit(value: str | None) -> int | None:
    """The chunk size (bytes) a user's ``semalign-pilot-chunks`` metadata asks for, within
    [MIN_CHUNK_BYTES, MAX_CHUNK_BYTES]; ``None`` (X whole, in the accept) for no value or one
    that is not a whole number."""
    if value is None or not value.strip().isdigit() or len(value) > 12:
        return None
    return min(max(int(value), MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)


def rows_per_chunk(rows: int, row_bytes: int, limit: int) -> int:
    """Rows of X per chunk: about rows / TARGET_CHUNKS, at most ``limit`` bytes (at least one
    row; 0 if one row alone exceeds ``limit``: X then travels whole)."""
    if row_bytes > limit:
        return 0
    return max(1, min(math.ceil(rows / TARGET_CHUNKS), limit // max(row_bytes, 1)))


class PilotSplitter:
    """Cuts compact HandshakeAccepts into the accept without X's data and its PilotChunks.

    The chunks of an X are made once and reused for every accept that carries the same X in
    the same session (compared byte for byte), so L users cost one copy of them, not L.
    """

    def __init__(self) -> None:
        self._key: tuple[str, int, bytes] | None = None
        self._chunks: list[bytes] = []

    def split(self, accept: bytes, limit: int | None) -> list[bytes]:
        """The messages to send for ``accept`` (serialized ApMessage) to a user that takes
        chunks of at most ``limit`` bytes: the accept alone (``limit`` None, no X in it, or X
        of a single row or with rows over the limit), else the header and its chunks."""
        if limit is None:
            return [accept]
        msg = parse_ap_message(accept)
        if msg.WhichOneof("body") != "accept" or not msg.accept.pilots.data:
            return [accept]
        acc = msg.accept
        data, rows = acc.pilots.data, int(acc.pilots.shape[0]) if acc.pilots.shape else 0
        if len(acc.pilots.shape) != 2 or rows < 2 or len(data) % rows:
            return [accept]
        per_chunk = rows_per_chunk(rows, len(data) // rows, limit)
        if per_chunk == 0:
            return [accept]
        chunks = self._chunks_of(acc.session_id, data, rows, per_chunk)
        acc.pilot_stream.total_bytes = len(data)
        acc.pilot_stream.chunks = len(chunks)
        acc.pilot_stream.rows_per_chunk = per_chunk
        acc.pilots.ClearField("data")
        return [msg.SerializeToString(), *chunks]

    def _chunks_of(self, session_id: str, data: bytes, rows: int, per_chunk: int) -> list[bytes]:
        key = (session_id, per_chunk, data)
        if self._key != key:
            step = len(data) // rows * per_chunk
            self._chunks = [
                pb.ApMessage(
                    pilot_chunk=pb.PilotChunk(
                        session_id=session_id, index=i, data=data[start : start + step]
                    )
                ).SerializeToString()
                for i, start in enumerate(range(0, len(data), step))
            ]
            self._key = key
        return self._chunks


class PilotAssembly:
    """The user's side of a streamed X: its declaration checked, its row blocks as they come.

    Args:
        header: the accept's ``pilots`` (shape, dtype, exponent; no data).
        stream: the accept's ``pilot_stream``.
        shape: X's shape as the user expects it, (c, n).
        dtypes: the proto codes X may have (the session's wire format).
        limit: the most bytes this user takes in one chunk (what it asked for).
        who: names the user in messages and progress lines.

    Raises:
        ProtocolError: the declaration does not fit: another shape or dtype, a layout or total
            byte count that is not that of X, a chunk count that does not cover its rows, or
            chunks larger than ``limit``.
    """

    def __init__(
        self,
        header: pb.Matrix,
        stream: pb.PilotStream,
        shape: tuple[int, int],
        dtypes: tuple[int, ...],
        *,
        limit: int = MAX_CHUNK_BYTES,
        who: str = "",
    ) -> None:
        what = "streamed pilots X"
        if header.data:
            raise ProtocolError(f"{what}: the accept carries X's data as well as a stream")
        if tuple(int(s) for s in header.shape) != tuple(shape):
            raise ProtocolError(f"{what}: shape {tuple(header.shape)}, expected {tuple(shape)}")
        # the header alone: dtype, layout and exponent checked on an empty matrix
        check_matrix(_rows(header, 0, b""), what, (0, shape[1]), dtypes, finite=False)
        rows, per_chunk = shape[0], int(stream.rows_per_chunk)
        self.total = dense_bytes(shape, header.dtype)
        self.row_bytes = self.total // max(rows, 1)
        if not self.total:
            raise ProtocolError(f"{what}: X {shape} is empty")
        if stream.total_bytes != self.total:
            raise ProtocolError(
                f"{what}: {stream.total_bytes:,} bytes declared, X {shape} has {self.total:,}"
            )
        if per_chunk < 1 or stream.chunks != math.ceil(rows / per_chunk):
            raise ProtocolError(
                f"{what}: {stream.chunks} chunks of {per_chunk} rows do not cover {rows} rows"
            )
        if per_chunk * self.row_bytes > limit:
            raise ProtocolError(
                f"{what}: chunks of {per_chunk * self.row_bytes:,} bytes, this user takes at "
                f"most {limit:,}"
            )
        self.header = pb.Matrix()  # a copy: the accept it came in may be cleared
        self.header.CopyFrom(header)
        self.shape, self.dtypes, self.who = shape, dtypes, who
        self.per_chunk, self.chunks = per_chunk, int(stream.chunks)
        self.received = 0  # chunks taken
        self.bytes = 0
        #: why the stream was refused (its later chunks are then dropped unread)
        self.failed: str | None = None

    @property
    def done(self) -> bool:
        return self.received == self.chunks and self.failed is None

    def missing(self) -> str:
        """Why X is not whole yet, for a message that needs it (a round's broadcast)."""
        if self.failed is not None:
            return f"the streamed pilots X were refused: {self.failed}"
        return f"the streamed pilots X are not complete: {self.received} of {self.chunks} chunks in"

    def add(self, chunk: pb.PilotChunk) -> tuple[slice, np.ndarray] | None:
        """The rows of X that ``chunk`` carries and their block (rows, n), decoded (a
        read-only view of the chunk's bytes at native precision); ``None`` once the stream
        was refused (later chunks are dropped unread, so the AP hears one reason).

        Raises:
            ProtocolError: the chunk breaks the declaration (out of order, beyond the
                declared count, another byte count than its rows, NaN or infinite values).
        """
        if self.failed is not None:
            return None
        try:
            return self._take(chunk)
        except ProtocolError as exc:
            self.failed = str(exc)
            raise

    def _take(self, chunk: pb.PilotChunk) -> tuple[slice, np.ndarray]:
        index = int(chunk.index)
        if self.received == self.chunks:
            raise ProtocolError(
                f"pilot chunk {index} beyond the {self.chunks} declared (X's "
                f"{self.total:,} bytes are complete)"
            )
        if index != self.received:
            raise ProtocolError(f"pilot chunk {index} where chunk {self.received} was due")
        first = index * self.per_chunk
        rows = slice(first, min(first + self.per_chunk, self.shape[0]))
        expected = (rows.stop - rows.start) * self.row_bytes
        if len(chunk.data) != expected:
            raise ProtocolError(
                f"pilot chunk {index}: {len(chunk.data):,} bytes, declared {expected:,} "
                f"({rows.stop - rows.start} rows of {self.row_bytes:,})"
            )
        what = f"pilot chunk {index}"
        matrix = _rows(self.header, rows.stop - rows.start, chunk.data)
        shape = (rows.stop - rows.start, self.shape[1])
        block = check_matrix(matrix, what, shape, self.dtypes, copy=False)
        before = 10 * self.bytes // self.total
        self.received += 1
        self.bytes += len(chunk.data)
        if 10 * self.bytes // self.total > before:
            log.info(
                "%s: pilots X %d %% (%.1f of %.1f MB, chunk %d of %d)",
                self.who,
                100 * self.bytes // self.total,
                self.bytes / 1e6,
                self.total / 1e6,
                self.received,
                self.chunks,
            )
        return rows, block


def _rows(header: pb.Matrix, rows: int, data: bytes) -> pb.Matrix:
    """A Matrix of ``rows`` rows of X: the header's columns, dtype and exponent, ``data``."""
    return pb.Matrix(
        shape=[rows, *header.shape[1:]],
        dtype=header.dtype,
        data=data,
        layout=header.layout,
        exponent=header.exponent,
    )
