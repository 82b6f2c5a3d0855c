"""The user half of the federated-ADMM strategies (``fed`` and ``multi-link``; section III-B).

Per round: G-step (eq. 7), then the uplink statistics A_l = (G_l H_l)^H (G_l H_l) (eq. 11) and
the pilot term, and the local loss terms of eq. (4). After the final broadcast (the transmit
matrix Z) only the G-step and an Ack. The user cannot tell a shared F from its own F_l, so both
strategies use this class.

Round protocols (the AP says which in the HandshakeAccept):

* ``paper``: the AP sends S_l = H_l F X (or F X: the user applies its channel); the user forms
  Y S^H and S S^H against the n pilots and uploads P_l = (G_l H_l)^H Y_l (K N_T, n). With
  ``precision`` SINGLE these O(n) products run in complex64 (Y kept once in complex64).
* ``compact``: the accept carries the whitened AP pilots X and B = X X^H; the user computes
  R = Y X^H (m, c) once and drops X. Each round the AP sends F: Y S^H = R (H F)^H,
  S S^H = H F B F^H H^H, and the upload is P_l X^H = (G_l H_l)^H R: no O(n) work a round.
  With W = R^H R (c, c), also once, :func:`~semalign.common.admm.compact_step` gives the
  round's A_l, P_l X^H and loss terms without forming G_l (m, K N_R): no O(m) work either.
  X may also follow the accept in chunks of rows (:mod:`semalign.common.pilot_stream`, over
  gRPC when the user asks): R is then formed column block by block as they arrive
  (:class:`StreamedCross`), while the rest of X is still on its way.

Arrays derived from the user's pilots alone (Y in complex64, R for one X) are kept on its
:class:`~semalign.client.user.UserData`, so users that share an encoder's data in one process
(simulations) compute and hold them once.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from semalign.client.evaluation import content_key
from semalign.client.strategies.base import UserContext, UserStrategy
from semalign.client.strategies.registry import register_user_strategy
from semalign.common import admm
from semalign.common.errors import ProtocolError
from semalign.common.pilot_stream import PilotAssembly
from semalign.common.threads import single_thread
from semalign.common.wire import check_matrix
from semalign.proto import semalign_pb2 as pb


def _digest(array: np.ndarray) -> str:
    """Content key of an array (its bytes, read in place)."""
    return hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8), digest_size=16).hexdigest()


@register_user_strategy("fed", "multi-link")
class AdmmUser(UserStrategy):
    """G_l (m/2, K N_R), refreshed at every broadcast."""

    def __init__(self, user: UserContext, name: str) -> None:
        super().__init__(user, name)
        self._g: np.ndarray | None = None
        self._step: admm.CompactStep | None = None  # compact: G formed only when asked for
        self.y_work: np.ndarray | None = None  # Y in the precision of the O(n) products
        self.cross: np.ndarray | None = None  # compact: R = Y X^H (m, c)
        self.pilot_gram: np.ndarray | None = None  # compact: B = X X^H (c, c)
        #: compact, X in chunks: R as they come (kept once whole, to refuse chunks beyond)
        self.streamed: StreamedCross | None = None

    @property
    def g(self) -> np.ndarray | None:
        """G_l (m/2, K N_R) of the last round (in compact rounds formed on first use)."""
        if self._g is None and self._step is not None:
            self._g = self._step.equalizer(self.cross)
        return self._g

    @g.setter
    def g(self, value: np.ndarray | None) -> None:
        """G_l formed now: a compact step kept from an earlier round is dropped."""
        self._g, self._step = value, None

    def _defer_g(self, step: admm.CompactStep) -> None:
        """This compact round's G_l, formed from ``step`` on first use (:attr:`g`); the G_l of
        an earlier round is dropped. Sets both fields directly (not through the :attr:`g`
        setter, which drops the step), so no assignment order matters."""
        self._g = None
        self._step = step

    def on_accept(self, acc: pb.HandshakeAccept) -> None:
        user = self.user
        self.representation = rep = user.representation
        # H = I_K (x) Hbar (K N_R, K N_T) of the user's channel estimate, formed once (its
        # real-composite form when widely linear)
        self.h = rep.channel_matrix(user.design_channel.matrix)
        # the pilots' rows and the representation: what Y, and so every derived array, is of
        self._rows = content_key(acc.pilot_ids) + ("-wl" if rep.widely_linear else "")
        self.noise_var = rep.noise_var(acc.noise_var)  # per row of the received block
        self.y_work = user.y
        if acc.precision == pb.SINGLE:
            key = ("y", "single", self._rows)
            self.y_work = self._derived(key, lambda: user.y.astype(np.complex64))
        if acc.round_protocol == pb.COMPACT:
            self._take_pilots(acc)
            # keep the accept without X: a parsed message holds all of its bytes while it lives
            acc.ClearField("pilots")
            acc.ClearField("pilot_gram")
            slim = pb.HandshakeAccept()
            slim.CopyFrom(acc)
            user.accept = slim

    def _derived(self, key: tuple, compute):
        """An array computed from this user's pilots only, shared by users of the same data."""
        memo = self.user.data.memo
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def _take_pilots(self, acc: pb.HandshakeAccept) -> None:
        """Compact protocol: R = Y X^H from the AP's X (c, n), and B = X X^H (c, c)."""
        user = self.user
        if not (acc.HasField("pilots") and acc.HasField("pilot_gram")):
            raise ProtocolError("compact round protocol without the pilots X and X X^H")
        rep, codes = self.representation, user.wire.codes
        shape = (rep.feature_dim(acc.ap_latent_dim), len(acc.pilot_ids))
        c = shape[0]
        # B in double precision whatever the wire precision, Hermitian-packed (protocol 3:
        # a dense B is a protocol error)
        layouts = (pb.HERMITIAN,)
        gram = check_matrix(
            acc.pilot_gram, "pilot Gram matrix", (c, c), rep.wire_codes, copy=False, layouts=layouts
        )
        self.pilot_gram = gram.astype(np.complex128, copy=False)
        if acc.HasField("pilot_stream"):  # X follows in chunks: R column block by block
            assembly = PilotAssembly(acc.pilots, acc.pilot_stream, shape, codes, who=user.user_id)
            self.streamed = StreamedCross(user.y, assembly)
            return

        def cross() -> np.ndarray:
            x_h = np.conjugate(x, dtype=np.complex128).T  # the one conversion of X
            return user.y @ x_h

        x = check_matrix(acc.pilots, "pilots X", shape, codes, copy=False)
        self._keep_cross(("cross", self._rows, _digest(x)), cross)

    def _keep_cross(self, key: tuple, compute) -> None:
        """R = Y X^H for the X of digest ``key[-1]`` (shared by users of the same data)."""
        self.cross = self._derived(key, compute)
        self._cross_key = key

    def on_extra(self, kind: str, body: Any) -> bytes | None:
        """A PilotChunk of a streamed X: its rows' columns of R now, while the rest travels;
        W = R^H R once the last is in. No reply."""
        if kind != "pilot_chunk":
            return super().on_extra(kind, body)
        streamed = self.streamed
        if streamed is None:
            raise ProtocolError("a pilot chunk, but the accept declared no streamed X")
        if streamed.add(body):  # the last one (a chunk beyond it is refused: kept to tell)
            self._keep_cross(("cross", self._rows, streamed.digest()), lambda: streamed.r)
            self._cross_gram()
        return None

    def _not_compact_yet(self) -> str:
        """Why a compact broadcast cannot be answered yet."""
        if self.streamed is None:
            return "compact broadcast in a paper session"
        return self.streamed.assembly.missing()

    # ------------------------------------------------------------------ paper rounds
    def on_broadcast(self, msg: pb.RoundBroadcast) -> bytes:
        user = self.user
        acc = user.accept
        if self.cross is not None or self.streamed is not None:
            raise ProtocolError("paper broadcast in a compact session")
        rep, k = self.representation, acc.channel_uses
        expected = (
            rep.symbol_rows(k * (user.antennas_rx if acc.channel_aware else acc.antennas_tx)),
            len(acc.pilot_ids),
        )
        s = check_matrix(msg.symbols, "broadcast symbols", expected, user.wire.codes, copy=False)
        s = s.astype(self.y_work.dtype, copy=False)
        if not acc.channel_aware:  # S_l = H_l (F X) on the user's estimate of H_l, no noise
            s = rep.from_symbols(user.design_channel(rep.to_symbols(s), noiseless=True))
            s = s.astype(self.y_work.dtype, copy=False)
        products = admm.pilot_products(self.y_work, s, user.y_norm2)
        with single_thread():
            self.g = admm.g_step(user.y, s, self.noise_var, products)
            sq, noise = admm.local_objective_terms(user.y, self.g, s, self.noise_var, products)
        user.received_rounds.append(msg.round)
        if msg.final:
            return self._ack(msg.round, sq, noise)
        a, p = admm.uplink_statistics(self.g, self.h, self.y_work)
        return self._upload("upload", msg.round, a, p, sq, noise)

    # ------------------------------------------------------------------ compact rounds
    def on_compact_broadcast(self, msg: pb.CompactBroadcast) -> bytes:
        user = self.user
        acc = user.accept
        if self.cross is None:
            raise ProtocolError(self._not_compact_yet())
        rep = self.representation
        expected = (rep.symbol_rows(acc.channel_uses * acc.antennas_tx), self.pilot_gram.shape[0])
        f = check_matrix(
            msg.pre_equalizer, "pre-equalizer F", expected, user.wire.codes, copy=False
        )
        f = f.astype(np.complex128, copy=False)
        with single_thread():
            hf = rep.apply_block_channel(user.hbar_estimate, f)  # H F on the estimate (K N_R, c)
            n = len(acc.pilot_ids)
            step = admm.compact_step(
                hf, self.h, self.pilot_gram, self._cross_gram(), user.y_norm2, n, self.noise_var
            )
            if step is None:  # M singular (noiseless): the explicit path and its fallback
                products = admm.compact_products(self.cross, hf, self.pilot_gram, user.y_norm2, n)
                self.g = admm.g_step(user.y, None, self.noise_var, products)
                sq, noise = admm.local_objective_terms(
                    user.y, self.g, None, self.noise_var, products
                )
                a, cross = admm.uplink_statistics(self.g, self.h, self.cross)
            else:
                self._defer_g(step)
                a, cross, sq, noise = step.a, step.cross, step.squared_error, step.noise_term
            user.received_rounds.append(msg.round)
            if msg.final:
                return self._ack(msg.round, sq, noise)
            return self._upload("compact_upload", msg.round, a, cross, sq, noise)

    def _cross_gram(self) -> np.ndarray:
        """W = R^H R (c, c) for the compact rounds, once per pilots and X (shared like R)."""

        def cross_gram() -> np.ndarray:
            w = self.cross.conj().T @ self.cross
            return (w + w.conj().T) / 2

        return self._derived(("cross_gram", *self._cross_key[1:]), cross_gram)

    def _upload(
        self, kind: str, round_: int, a: np.ndarray, term: np.ndarray, sq: float, noise: float
    ) -> bytes:
        """The round's upload, filled in place (the large ``term`` is copied once): ``kind``
        "upload" (paper: A_l and P_l (K N_T, n)) or "compact_upload" (A_l and P_l X^H)."""
        out = pb.UserMessage()
        up = getattr(out, kind)
        up.session_id, up.round = self.user.accept.session_id, round_
        wire = self.user.wire
        wire.fill(up.a, a, hermitian=True)  # A_l is Hermitian: its upper triangle suffices
        wire.fill(up.p if kind == "upload" else up.cross, term)
        up.squared_error, up.noise_term = sq, noise
        return out.SerializeToString()

    def _ack(self, round_: int, sq: float, noise: float) -> bytes:
        ack = pb.Ack(
            session_id=self.user.accept.session_id,
            round=round_,
            squared_error=sq,
            noise_term=noise,
        )
        return pb.UserMessage(ack=ack).SerializeToString()

    def estimate(self, symbols: np.ndarray, indices: np.ndarray | None) -> np.ndarray:
        """G_l H_l symbols (+ noise): (m/2, n)."""
        if self.g is None:
            raise ProtocolError("no equalizer yet: evaluation before alignment")
        rep = self.representation
        return self.g @ rep.from_symbols(self.user.channel(rep.to_symbols(symbols)))


class StreamedCross:
    """R = Y X^H (m, c) of an X that arrives in chunks of rows (:class:`PilotAssembly`): each
    chunk's rows give R's columns of the same index, R[:, rows] = Y X[rows]^H, the products
    of the whole X's one (each column is the same sum over the n pilots). X's digest is
    taken on the way, over the same bytes as :func:`_digest` of the whole X."""

    def __init__(self, y: np.ndarray, assembly: PilotAssembly) -> None:
        self.y, self.assembly = y, assembly
        self.r = np.empty((y.shape[0], assembly.shape[0]), dtype=np.complex128)
        self._hash = hashlib.blake2b(digest_size=16)

    def add(self, chunk: pb.PilotChunk) -> bool:
        """Take one chunk (ProtocolError if it breaks the declaration); True once R is whole."""
        taken = self.assembly.add(chunk)
        if taken is None:  # the stream was refused already: dropped unread
            return False
        rows, block = taken
        self.r[:, rows] = self.y @ np.conjugate(block, dtype=np.complex128).T
        self._hash.update(np.ascontiguousarray(block).view(np.uint8))
        return self.assembly.done

    def digest(self) -> str:
        return self._hash.hexdigest()
