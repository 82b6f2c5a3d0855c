"""What every strategy's AP half does, and what it may read of the AP.

The :class:`~semalign.server.access_point.AccessPoint` owns the handshake, the registry of
users, drops and the evaluation plumbing; at each phase of the session it asks its strategy:

* construction (``cls(config, cdim)``): how many of the K channel uses carry data
  (:attr:`ApStrategy.data_channel_uses`; Top-K may spend some on side information);
* :meth:`ApStrategy.start`: state once the pilots are whitened (X, section III);
* :meth:`ApStrategy.check_request` (and :meth:`ApStrategy.check_rejoin`): what the strategy
  needs of a handshake (of a rejoin); :meth:`ApStrategy.add_user`: a user passed the
  handshake; :meth:`ApStrategy.complete_accept` adds the strategy's entries to its
  HandshakeAccept (the ADMM family: the round protocol);
* :meth:`ApStrategy.extra_messages` / :meth:`ApStrategy.receive_extra`: exchanges besides the
  protocol's phases, after the handshake and after each round's uploads (none by default;
  secure aggregation: its key setup and each round's unmasking);
* :attr:`ApStrategy.rounds` rounds of :meth:`round_messages` -> :meth:`receive_upload` per
  user (uploads of the kinds :attr:`ApStrategy.upload_kinds`) -> :meth:`step` (the ADMM
  family; baselines have none), whose round figures are :meth:`loss_totals` when the strategy
  decodes them itself;
* :meth:`final_messages`: the last transmission before evaluation (ADMM: the final broadcast
  of Z; baselines: the precoded pilots), exchanged as phase :attr:`final_phase`;
* :meth:`transmit`: native test latents to transmitted symbols (by default the AP's whitened
  features go to :meth:`encode`; the baselines select in the native latent instead);
* :meth:`result_info`: extra entries of the results (e.g. ``baseline``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.common.errors import ProtocolError
from semalign.common.representation import Representation
from semalign.common.wire import WireFormat
from semalign.proto import semalign_pb2 as pb


@dataclass
class UserState:
    """What the AP knows about one registered user.

    Attributes:
        hbar: (N_R, N_T) channel matrix Hbar_l (channel-aware AP), else ``None``.
        upload: this round's (A_l (K N_T, K N_T), P_l (K N_T, n)), once received; in the compact
            round protocol (A_l, P_l X^H (K N_T, c)).
        terms: this round's loss terms (||Y_l - G_l S_l||^2, n sigma^2 ||G_l||^2).
        dropped: why and when the AP stopped waiting for this user.
        round_protocol: how this user's ADMM rounds travel, ``paper`` or ``compact``
            (negotiated in the handshake).
        rejoins: how often the user came back on a new stream (:meth:`AccessPoint.rejoin`).
    """

    user_id: str
    index: int
    encoder: str
    latent_dim: int
    antennas_rx: int
    snr_db: float
    hbar: np.ndarray | None
    upload: tuple[np.ndarray, np.ndarray] | None = None
    terms: tuple[float, float] | None = None
    dropped: str | None = None
    round_protocol: str = "paper"
    rejoins: int = 0


class ApContext(Protocol):
    """The AP as a strategy sees it (read-only, but for :meth:`drop`)."""

    config: AlignmentConfig
    session_id: str
    round: int
    x: np.ndarray  # (c, n) whitened pilots X (complex; real-valued when widely linear)
    pilot_latents: np.ndarray  # (n, d) the AP's native real pilot latents
    latent_dim: int  # d: real features of the AP latent
    n: int  # pilots
    cdim: int  # c: d/2 complex features of the AP latent (d reals when widely linear)
    symbols: int  # K N_T data symbols per data point (2 K N_T reals when widely linear)
    representation: Representation  # the paper's complex packing or the real-composite view
    wire: WireFormat  # how features, symbols, F and uploads travel (``wire_precision``)
    data_channel_uses: int  # K minus side-information uses

    @property
    def active_users(self) -> list[UserState]: ...

    def drop(self, user_id: str, reason: str) -> None:
        """Stop serving a user that misbehaved (secure aggregation: a bad key share)."""
        ...

    def whiten(self, latents: np.ndarray) -> np.ndarray:
        """Whitened features (c, n) of native real latents (n, d)."""
        ...


class ApStrategy(ABC):
    """The AP's half of one strategy (see the module docstring for the call order).

    Args:
        config: the session configuration.
        cdim: c = d/2, complex features of the AP latent.
    """

    name: ClassVar[str] = ""
    #: name of the traffic phase of :meth:`final_messages` in the results
    final_phase: ClassVar[str] = "final"
    #: whether evaluation symbols differ per user (otherwise one message is shared)
    per_user_encoding: ClassVar[bool] = False
    #: the UserMessage kinds a round's upload may have (the AP refuses any other)
    upload_kinds: ClassVar[tuple[str, ...]] = ("upload", "compact_upload")

    def __init__(self, config: AlignmentConfig, cdim: int) -> None:
        self.config = config
        self.cdim = cdim
        self.data_channel_uses = config.channel_uses

    def start(self, ap: ApContext) -> None:
        """The AP's pilots are whitened: set up the strategy's state."""
        self.ap = ap

    def check_request(self, request: pb.HandshakeRequest) -> None:  # noqa: B027 (optional hook)
        """Refuse (ProtocolError) a handshake this strategy cannot serve, before the user is
        registered (secure aggregation: its keys, the compact protocol)."""

    def check_rejoin(  # noqa: B027 (optional hook)
        self, state: UserState, request: pb.HandshakeRequest
    ) -> None:
        """Refuse (ProtocolError) a rejoin of ``state`` the strategy cannot take back (secure
        aggregation: other keys than its first handshake)."""

    def add_user(self, state: UserState) -> None:  # noqa: B027 (optional hook)
        """``state`` completed its handshake."""

    def complete_accept(  # noqa: B027 (optional hook)
        self, state: UserState, request: pb.HandshakeRequest, accept: pb.HandshakeAccept
    ) -> None:
        """Add this strategy's entries to ``state``'s HandshakeAccept (before it is sent)."""

    @property
    def rounds(self) -> int:
        """How many rounds the driver runs before :meth:`final_messages`."""
        return 0

    def round_messages(self) -> dict[str, bytes]:
        """ApMessage bytes per active user for the current round."""
        raise ProtocolError(f"strategy {self.config.strategy} has no ADMM rounds")

    def receive_upload(self, state: UserState, upload: pb.RoundUpload | pb.CompactUpload) -> None:
        """Check and keep a user's RoundUpload or CompactUpload (raise ProtocolError if it is not
        acceptable)."""
        raise ProtocolError(f"strategy {self.config.strategy} expects no uploads")

    def step(self, users: list[UserState]) -> tuple[float, float]:
        """Update from the uploads of ``users``; returns (primal, dual) residual norms."""
        raise ProtocolError(f"strategy {self.config.strategy} has no ADMM rounds")

    def loss_totals(self) -> tuple[float, float] | None:
        """(pilot MSE, objective) of the round just stepped, when the strategy decodes them
        itself (masked uploads: only their means reach the AP); ``None`` (the default): the AP
        computes them from each user's loss terms."""
        return None

    def extra_messages(self) -> dict[str, bytes]:
        """ApMessage bytes per user of the next exchange besides the protocol's phases, or
        none (the default). The driver asks after the handshake and after each round's
        uploads, until there is none."""
        return {}

    def receive_extra(self, state: UserState, msg: pb.UserMessage) -> None:
        """A user's reply to an :meth:`extra_messages` message (ProtocolError if out of place;
        by default nothing is expected)."""
        raise ProtocolError(f"unexpected {msg.WhichOneof('body')} from {state.user_id}")

    def final_messages(self) -> dict[str, bytes]:
        """ApMessage bytes per active user for the last transmission before evaluation."""
        return {}

    def transmit(
        self, latents: np.ndarray, state: UserState | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Transmitted symbols (K N_T, n) for native real AP latents (n, d), plus symbol indices
        where users need them: by default :meth:`encode` of the AP's whitened features."""
        return self.encode(self.ap.whiten(latents), state)

    @abstractmethod
    def encode(
        self, x: np.ndarray, state: UserState | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Transmitted symbols (K N_T, n) for whitened latents x (c, n), plus symbol indices
        (K N_T, n) where users need them; ``state``: the receiving user (per-user encoding)."""

    def result_info(self) -> dict[str, Any]:
        """Extra entries of this session's results block."""
        return {}

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """What this strategy needs to continue after a restart (F, Z, U...), as named arrays
        (:mod:`semalign.server.checkpoint`); the rest follows from config, pilots and users."""
        return {}

    def restore_state(self, arrays: dict[str, np.ndarray]) -> None:  # noqa: B027 (optional hook)
        """Take back what :meth:`checkpoint_state` returned (users are registered already)."""
