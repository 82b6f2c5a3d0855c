"""The user half of the federated-ADMM strategies (``fed`` and ``multi-link``; section III-B).

Per round: G-step (eq. 7) on the received pilots S_l, then the uplink statistics
A_l = (G_l H_l)^H (G_l H_l) (eq. 11) and P_l = (G_l H_l)^H Y_l, and the local loss terms of
eq. (4). After the final broadcast (S_l = H_l Z X) only the G-step and an Ack. The user cannot
tell a shared F from its own F_l, so both strategies use this class.
"""

from __future__ import annotations

import numpy as np
from semalign.client.strategies.base import UserContext, UserStrategy
from semalign.common import admm
from semalign.common.errors import ProtocolError
from semalign.common.wire import check_matrix, to_matrix
from semalign.proto import semalign_pb2 as pb


class AdmmUser(UserStrategy):
    """G_l (m/2, K N_R), refreshed at every broadcast."""

    def __init__(self, user: UserContext, name: str) -> None:
        super().__init__(user, name)
        self.g: np.ndarray | None = None

    def on_broadcast(self, msg: pb.RoundBroadcast) -> bytes:
        user = self.user
        acc = user.accept
        k = acc.channel_uses
        expected = (
            k * (user.antennas_rx if acc.channel_aware else acc.antennas_tx),
            len(acc.pilot_ids),
        )
        s = check_matrix(msg.symbols, "broadcast symbols", expected).astype(np.complex128)
        if not acc.channel_aware:  # S_l = H_l (F X) on the user's estimate of H_l, no noise
            s = user.design_channel(s, noiseless=True)
        products = admm.pilot_products(user.y, s, user.y_norm2)
        self.g = admm.g_step(user.y, s, acc.noise_var, products)
        sq, noise = admm.local_objective_terms(user.y, self.g, s, acc.noise_var, products)
        user.received_rounds.append(msg.round)
        if msg.final:
            ack = pb.Ack(
                session_id=acc.session_id, round=msg.round, squared_error=sq, noise_term=noise
            )
            return pb.UserMessage(ack=ack).SerializeToString()
        a, p = admm.uplink_statistics(self.g, user.design_channel.matrix, user.y)
        up = pb.RoundUpload(
            session_id=acc.session_id,
            round=msg.round,
            a=to_matrix(a, "complex64"),
            p=to_matrix(p, "complex64"),
            squared_error=sq,
            noise_term=noise,
        )
        return pb.UserMessage(upload=up).SerializeToString()

    def estimate(self, symbols: np.ndarray, indices: np.ndarray | None) -> np.ndarray:
        """G_l H_l symbols (+ noise): (m/2, n)."""
        if self.g is None:
            raise ProtocolError("no equalizer yet: evaluation before alignment")
        return self.g @ self.user.channel(symbols)
