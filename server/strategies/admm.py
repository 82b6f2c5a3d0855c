"""The AP half shared by the federated-ADMM strategies (section III-B, Algorithm 1).

Each round the AP broadcasts S_l = H_l F X (channel-aware) or F X, takes every user's
A_l (K N_T, K N_T) and P_l (K N_T, n), and runs the F-step (eqs. 11-15), then the Z projection
(eq. 17) and the dual update (eq. 18). :class:`~.shared_admm.SharedAdmm` (``fed``) averages the
local F_l into one F (eq. 8); :class:`~.per_user_admm.PerUserAdmm` (``multi-link``) keeps one
F_l, Z_l, U_l per user. After the last round the final broadcast uses the feasible Z (Z_l) so
that each user's G_l matches what will be sent.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
from semalign.common import admm
from semalign.common.channel import block_channel
from semalign.common.errors import ProtocolError
from semalign.common.validation import check_bounded, check_terms, one_line
from semalign.common.wire import check_matrix, to_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.strategies.base import WIRE_DTYPE, ApContext, ApStrategy, UserState


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
        rng = np.random.default_rng(self.config.seed)
        self.shared = AdmmVariables.initial(admm.init_pre_equalizer(ap.symbols, ap.cdim, rng))

    @abstractmethod
    def variables(self, state: UserState | None) -> AdmmVariables:
        """The F, Z, U that user ``state`` is served with."""

    @property
    def rounds(self) -> int:
        return self.config.iterations

    def round_messages(self) -> dict[str, bytes]:
        return self._broadcast(final=False)

    def final_messages(self) -> dict[str, bytes]:
        return self._broadcast(final=True)

    def _broadcast(self, *, final: bool) -> dict[str, bytes]:
        """RoundBroadcast bytes per active user: S_l = H_l F X (channel-aware) or F X, with the
        transmit matrix Z instead of F when ``final``; users answer with an Ack then."""
        ap = self.ap
        out = {}
        for state in ap.active_users:
            variables = self.variables(state)
            s = (variables.z if final else variables.f) @ ap.x
            if self.config.csi:
                s = block_channel(state.hbar, ap.data_channel_uses) @ s
            state.upload, state.terms = None, None
            msg = pb.RoundBroadcast(
                session_id=ap.session_id,
                round=ap.round,
                symbols=to_matrix(s, WIRE_DTYPE),
                final=final,
            )
            out[state.user_id] = pb.ApMessage(broadcast=msg).SerializeToString()
        return out

    def receive_upload(self, state: UserState, upload: pb.RoundUpload) -> None:
        """Keep A_l (K N_T, K N_T) and P_l (K N_T, n) of this round, after checking them:
        this session and round, complex64 of exactly these shapes, finite, |entries| <= MAX_ABS,
        A_l Hermitian."""
        ap, user_id = self.ap, state.user_id
        if upload.session_id != ap.session_id or upload.round != ap.round:
            raise ProtocolError(
                f"upload from {user_id} for session {one_line(upload.session_id, 40)!r} round "
                f"{upload.round}, expected {ap.session_id} round {ap.round}"
            )
        what = f"upload from {user_id}"
        s, n = ap.symbols, ap.n
        a = check_matrix(upload.a, f"{what}: A", (s, s), (pb.COMPLEX64,))
        p = check_matrix(upload.p, f"{what}: P", (s, n), (pb.COMPLEX64,))
        a = check_bounded(a, f"{what}: A").astype(np.complex128)
        p = check_bounded(p, f"{what}: P").astype(np.complex128)
        if np.max(np.abs(a - a.conj().T), initial=0.0) > 1e-5 * np.max(np.abs(a), initial=1.0):
            raise ProtocolError(f"{what}: A is not Hermitian")
        state.upload = (a, p)
        state.terms = check_terms(upload.squared_error, upload.noise_term, what)

    def f_step(self, state: UserState, variables: AdmmVariables) -> np.ndarray:
        """User ``state``'s local F_l (K N_T, c) from its upload (eqs. 11-15)."""
        a, p = state.upload
        return admm.f_step(a, p, self.ap.x, self.gram, variables.z, variables.u, self.config.rho)

    def encode(
        self, x: np.ndarray, state: UserState | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Z x for whitened latents x (c, n): (K N_T, n), no indices."""
        return self.variables(state).z @ x, None
