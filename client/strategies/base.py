"""What every strategy's user half does, and what it may read of the user.

The :class:`~semalign.client.user.User` owns the handshake, its whitened pilots Y_l, its channel
and the evaluation (decoding, metrics). Between the HandshakeAccept and the evaluation the AP's
messages belong to the strategy: ``broadcast`` (ADMM rounds) goes to
:meth:`UserStrategy.on_broadcast`, ``pilots`` (baselines) to :meth:`UserStrategy.on_pilots`, and
any message besides the protocol's phases (secure aggregation's key setup and unmasking) to
:meth:`UserStrategy.on_extra`. At evaluation the user asks :meth:`UserStrategy.estimate` for its
whitened estimate of the test latents.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np
from semalign.common.channels import BlockFadingLink
from semalign.common.errors import ProtocolError
from semalign.common.representation import Representation
from semalign.common.wire import WireFormat
from semalign.proto import semalign_pb2 as pb


class PrivateData(Protocol):
    """What a strategy uses of the user's private data."""

    #: arrays derived from the data alone, shared by users holding the same data
    memo: dict[Any, Any]


class UserContext(Protocol):
    """The user as a strategy sees it (set once the handshake is accepted)."""

    user_id: str
    snr_db: float
    antennas_rx: int
    hbar: np.ndarray  # (N_R, N_T) this user's true channel matrix (acts on the symbols)
    hbar_estimate: np.ndarray  # (N_R, N_T) its CSI estimate (what the user designs with)
    accept: pb.HandshakeAccept
    channel: BlockFadingLink  # K uses of the true Hbar with this user's noise
    design_channel: BlockFadingLink  # K uses of the estimate (noiseless use only)
    y: np.ndarray  # (m/2, n) whitened complex pilots Y_l (never leave the user); (m, n) reals
    # (as complex128) when widely linear
    representation: Representation  # the paper's complex packing or the real-composite view
    wire: WireFormat  # how features, symbols, F and uploads travel (the accept's precision)
    y_norm2: float  # ||Y_l||_F^2
    data: PrivateData  # the private latents (:class:`~semalign.client.user.UserData`)
    received_rounds: list[int]


class UserStrategy(ABC):
    """The user's half of one strategy.

    Args:
        user: the user it works for.
        name: the strategy's registered name (one class may serve several).
    """

    def __init__(self, user: UserContext, name: str) -> None:
        self.user = user
        self.name = name

    def on_accept(self, acc: pb.HandshakeAccept) -> None:  # noqa: B027 (optional hook)
        """The handshake was accepted (``user.accept`` is set): take the strategy's entries."""

    def on_broadcast(self, msg: pb.RoundBroadcast) -> bytes:
        """Answer a RoundBroadcast (UserMessage bytes)."""
        raise ProtocolError(f"strategy {self.name} expects no round broadcasts")

    def on_compact_broadcast(self, msg: pb.CompactBroadcast) -> bytes:
        """Answer a CompactBroadcast (UserMessage bytes)."""
        raise ProtocolError(f"strategy {self.name} expects no compact broadcasts")

    def on_pilots(self, msg: pb.PilotTransmission) -> bytes:
        """Answer a PilotTransmission (UserMessage bytes)."""
        raise ProtocolError(f"strategy {self.name} expects no pilot transmission")

    def on_extra(self, kind: str, body: Any) -> bytes:
        """Answer an AP message besides the protocol's phases (``kind``: its ApMessage field,
        ``body`` the message); by default none is expected (ProtocolError)."""
        raise ProtocolError(f"unexpected message {kind}")

    def read_indices(self, message: pb.Matrix, n: int) -> np.ndarray:
        """Checked feature indices of an evaluation request of ``n`` points (baselines only)."""
        raise ProtocolError(f"strategy {self.name} takes no feature indices")

    @abstractmethod
    def estimate(self, symbols: np.ndarray, indices: np.ndarray | None) -> np.ndarray:
        """Receive ``symbols`` (K N_T, n) through the channel and estimate the user's whitened
        latents (m/2, n); ``indices`` (2 K N_T, n): which native AP features were sent
        (baselines)."""
