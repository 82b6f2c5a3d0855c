"""The AP half shared by the federated-ADMM strategies (section III-B, Algorithm 1).

Each round the AP sends every user its round message, takes every user's A_l (K N_T, K N_T) and
pilot term, and runs the F-step (eqs. 11-15), then the Z projection (eq. 17) and the dual update
(eq. 18). :class:`~.shared_admm.SharedAdmm` (``fed``) averages the local F_l into one F (eq. 8);
:class:`~.per_user_admm.PerUserAdmm` (``multi-link``) keeps one F_l, Z_l, U_l per user. After the
last round the final broadcast uses the feasible Z (Z_l) so that each user's G_l matches what
will be sent.

Round protocols (negotiated per user in the handshake, :meth:`AdmmStrategy.complete_accept`):

* ``paper`` (section III-B): down S_l = H_l F X (channel-aware) or F X, (K N, n); up P_l =
  (G_l H_l)^H Y_l (K N_T, n). F X is computed once per distinct F and H_l applied per channel
  use; all users' P_l X^H are one stacked product (:func:`~semalign.common.admm.cross_terms`).
* ``compact``: the whitened pilots X and B = X X^H go to the user once, in its HandshakeAccept;
  each round F goes down and P_l X^H (K N_T, c) comes up, O(K N d) bytes instead of O(K N n).
  The F-step takes P_l X^H as it is. Paper and compact users can share a session.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from semalign.common import admm
from semalign.common.errors import ProtocolError
from semalign.common.threads import single_thread
from semalign.common.validation import check_bounded, check_terms, one_line
from semalign.common.wire import check_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.strategies.base import ApContext, ApStrategy, UserState

log = logging.getLogger(__name__)


@dataclass
class AdmmVariables:
    """F (the pre-equalizer), Z (its feasible copy) and U (scaled dual), each (K N_T, c)."""

    f: np.ndarray
    z: np.ndarray
    u: np.ndarray

    @classmethod
    def initial(cls, f: np.ndarray) -> AdmmVariables:
        """F^(0) = ``f``, Z^(0) = U^(0) = 0 (Algorithm 1, line 1)."""
        return cls(f, np.zeros_like(f), np.zeros_like(f))

    def consensus(self, f: np.ndarray, power: float, rho: float) -> tuple[float, float]:
        """Take F^(t+1) = ``f``, project Z (eq. 17), update U (eq. 18); returns the primal and
        dual residual norms ||F - Z||_F and rho ||Z - Z_prev||_F."""
        self.f = f
        z_prev = self.z
        self.z = admm.project_power(self.f + self.u, power)
        self.u = admm.dual_update(self.u, self.f, self.z)
        return admm.residuals(self.f, self.z, z_prev, rho)


class AdmmStrategy(ApStrategy):
    """Rounds of broadcast, uploads and F-steps; subclasses say whose F a user gets."""

    def start(self, ap: ApContext) -> None:
        super().start(ap)
        self.gram = admm.factor_gram(ap.x)  # B = X X^H (eq. 12), once per run
        # X in the precision of the O(n) products (the same array in double precision)
        self.x_work = ap.x.astype(admm.COMPLEX[self.config.precision], copy=False)
        rng = np.random.default_rng(self.config.seed)
        self.representation = rep = ap.representation
        self.wire = ap.wire  # features, symbols, F and uploads (``wire_precision``)
        #: the bound on tr(F F^H) that gives transmit power P_T in this representation
        self.power_budget = rep.power_budget(self.config.power)
        self.shared = AdmmVariables.initial(rep.init_pre_equalizer(ap.symbols, ap.cdim, rng))
        self._pilot_matrices: tuple[pb.Matrix, pb.Matrix] | None = None
        self.handshake_pilot_bytes = 0

    @abstractmethod
    def variables(self, state: UserState | None) -> AdmmVariables:
        """The F, Z, U that user ``state`` is served with."""

    @property
    def rounds(self) -> int:
        return self.config.iterations

    # ------------------------------------------------------------------ handshake
    def complete_accept(
        self, state: UserState, request: pb.HandshakeRequest, accept: pb.HandshakeAccept
    ) -> None:
        """Precision and round protocol: compact when configured and the user offers it (then X
        and B = X X^H travel in the accept, once); otherwise paper. Defaults stay unset, so a
        paper, double-precision accept is byte for byte what it was before the negotiation."""
        if self.config.precision == "single":
            accept.precision = pb.SINGLE
        if self.config.protocol != "compact":
            return
        if pb.COMPACT not in request.round_protocols:
            log.warning("%s does not offer the compact round protocol: paper rounds", state.user_id)
            return
        if self._pilot_matrices is None:  # serialized once, for every user
            gram = self.gram.matrix  # Hermitian up to rounding: made exactly so
            self._pilot_matrices = (
                self.wire.matrix(self.ap.x),
                self.wire.double_matrix((gram + gram.conj().T) / 2, hermitian=True),
            )
        pilots, gram = self._pilot_matrices
        state.round_protocol = "compact"
        accept.round_protocol = pb.COMPACT
        accept.pilots.CopyFrom(pilots)
        accept.pilot_gram.CopyFrom(gram)
        if not state.rejoins:  # the session's figure; a rejoin's bytes are the wire's
            self.handshake_pilot_bytes += pilots.ByteSize() + gram.ByteSize()

    # ------------------------------------------------------------------ rounds
    def round_messages(self) -> dict[str, bytes]:
        return self._broadcast(final=False)

    def final_messages(self) -> dict[str, bytes]:
        return self._broadcast(final=True)

    def _broadcast(self, *, final: bool) -> dict[str, bytes]:
        """ApMessage bytes per active user, with the transmit matrix Z instead of F when
        ``final`` (users answer with an Ack then): paper users get S_l = H_l F X
        (channel-aware) or F X, compact users F itself."""
        ap, rep, wire = self.ap, self.representation, self.wire
        out = {}
        pilots: dict[int, np.ndarray] = {}  # F X per distinct F (id), computed once
        shared: dict[int, bytes] = {}  # the message, when every user gets the same F X
        for state in ap.active_users:
            variables = self.variables(state)
            f = variables.z if final else variables.f
            state.upload, state.terms = None, None
            message = pb.ApMessage()  # filled in place: the matrix is copied once
            if state.round_protocol == "compact":
                msg = message.compact_broadcast
                msg.session_id, msg.round, msg.final = ap.session_id, ap.round, final
                wire.fill(msg.pre_equalizer, f)
                self.complete_broadcast(msg, variables)
                out[state.user_id] = message.SerializeToString()
                continue
            key = id(f)
            if key not in pilots:
                pilots[key] = f.astype(self.x_work.dtype, copy=False) @ self.x_work
            if not self.config.csi and key in shared:
                out[state.user_id] = shared[key]
                continue
            msg = message.broadcast
            msg.session_id, msg.round, msg.final = ap.session_id, ap.round, final
            if self.config.csi:
                with single_thread():
                    received = rep.apply_block_channel(state.hbar, pilots[key])
                wire.fill(msg.symbols, received)
            else:
                wire.fill(msg.symbols, pilots[key])
            out[state.user_id] = message.SerializeToString()
            if not self.config.csi:
                shared[key] = out[state.user_id]
        return out

    def complete_broadcast(self, msg: pb.CompactBroadcast, variables: AdmmVariables) -> None:
        """Add a variant's entries to a compact broadcast (secure aggregation: Z - U)."""

    def receive_upload(self, state: UserState, upload: pb.RoundUpload | pb.CompactUpload) -> None:
        """Keep A_l (K N_T, K N_T) and P_l (K N_T, n) (paper) or P_l X^H (K N_T, c) (compact)
        of this round, after checking them. P_l stays a view of the message's bytes until the
        step converts it, once."""
        ap, user_id = self.ap, state.user_id
        if upload.session_id != ap.session_id or upload.round != ap.round:
            raise ProtocolError(
                f"upload from {user_id} for session {one_line(upload.session_id, 40)!r} round "
                f"{upload.round}, expected {ap.session_id} round {ap.round}"
            )
        compact = isinstance(upload, pb.CompactUpload)
        if compact != (state.round_protocol == "compact"):
            kind = "compact" if compact else "paper"
            raise ProtocolError(
                f"{kind} upload from {user_id}, whose rounds use the {state.round_protocol} "
                "protocol"
            )
        what = f"upload from {user_id}"
        s, columns = ap.symbols, (ap.cdim if compact else ap.n)
        name = "P X^H" if compact else "P"
        codes = self.wire.codes[:1]  # users send single precision (or the 16-bit code)
        # A_l Hermitian-packed, always (protocol 3): a dense A_l is a protocol error
        a = check_matrix(upload.a, f"{what}: A", (s, s), codes, layouts=(pb.HERMITIAN,))
        # P_l stays a view of the message's bytes until the step converts it, once
        term = check_matrix(
            upload.cross if compact else upload.p,
            f"{what}: {name}",
            (s, columns),
            codes,
            copy=False,
        )
        a = check_bounded(a, f"{what}: A").astype(np.complex128)
        term = check_bounded(term, f"{what}: {name}")
        if np.max(np.abs(a - a.conj().T), initial=0.0) > 1e-5 * np.max(np.abs(a), initial=1.0):
            raise ProtocolError(f"{what}: A is not Hermitian")
        state.upload = (a, term)
        state.terms = check_terms(upload.squared_error, upload.noise_term, what)

    def local_steps(self, users: list[UserState]) -> list[np.ndarray]:
        """Every user's local F_l (K N_T, c) from its upload (eqs. 11-15), in order: the paper
        users' P_l X^H as one stacked product, then the small Sylvester solves."""
        uploads, duals = self._f_step_inputs(users)
        with single_thread():
            return admm.f_steps(uploads, duals, self.gram, self.config.rho)

    def local_mean(self, users: list[UserState]) -> np.ndarray:
        """(1/L) sum_l F_l (eq. 8) over ``users``' local F-steps, the F_l never formed."""
        uploads, duals = self._f_step_inputs(users)
        with single_thread():
            return admm.f_mean(uploads, duals, self.gram, self.config.rho)

    def _f_step_inputs(self, users: list[UserState]) -> tuple[list, list]:
        """((A_l, P_l X^H), (Z, U)) for every user, in order."""
        paper = [u for u in users if u.round_protocol != "compact"]
        crosses = dict(
            zip(
                (u.user_id for u in paper),
                admm.cross_terms(self.x_work, [u.upload[1] for u in paper]),
                strict=True,
            )
        )
        uploads, duals = [], []
        for state in users:
            a, term = state.upload
            cross = crosses.get(state.user_id)
            uploads.append((a, term.astype(np.complex128) if cross is None else cross))
            v = self.variables(state)
            duals.append((v.z, v.u))
        return uploads, duals

    def result_info(self) -> dict[str, Any]:
        """``round_protocol`` (compact sessions only): users per protocol and the bytes of the
        pilots X and B = X X^H sent in the handshake (also counted in the handshake phase)."""
        if self.config.protocol != "compact":
            return {}
        users = list(self.ap.users.values())
        compact = sum(u.round_protocol == "compact" for u in users)
        return {
            "round_protocol": {
                "compact_users": compact,
                "paper_users": len(users) - compact,
                "handshake_pilot_bytes": self.handshake_pilot_bytes,
            }
        }

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The shared F, Z, U and the handshake's pilot bytes."""
        v = self.shared
        return {
            "f": v.f,
            "z": v.z,
            "u": v.u,
            "handshake_pilot_bytes": np.array(self.handshake_pilot_bytes),
        }

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.shared = AdmmVariables(arrays["f"], arrays["z"], arrays["u"])
        self.handshake_pilot_bytes = int(arrays["handshake_pilot_bytes"])

    def encode(
        self, x: np.ndarray, state: UserState | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Z x for whitened latents x (c, n): (K N_T, n), no indices."""
        return self.variables(state).z @ x, None
