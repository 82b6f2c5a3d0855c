"""``fed`` with ``--aggregation secure``: the AP learns only the sum of the users' local F_l.

Each user runs its own F-step (eqs. 13-14) from A_l, P_l X^H (compact protocol: it holds
R = Y_l X^H and B = X X^H) and the broadcast Z - U, and uploads F_l in fixed point plus
pairwise masks (:mod:`semalign.common.secure_aggregation`). The masks cancel in the sum, from
which the AP takes F = (1/|S|) sum_l F_l (eq. 8) over the users S that uploaded, then Z and U
as in :class:`~.shared_admm.SharedAdmm`.

Exchanges besides the rounds (:meth:`SecureSharedAdmm.extra_messages`, which the session
driver runs after the handshake and after each round's uploads):

1. setup: every user gets the participants' encryption keys and the threshold t
   (:func:`~semalign.common.secure_aggregation.threshold_for`) and answers with the public
   keys of its T masking keys and T self-mask keys (one of each per round) and its shares of
   them, one bundle sealed for each other participant;
2. delivery: each user gets the bundles sealed for it (the AP cannot open them) and every
   participant's round masking keys, and acks;
3. unmasking, after every round r's uploads (double masking): the users whose upload arrived
   send their shares of the round-r self-mask keys of those users and of the round-r masking
   keys of the participants that did not upload. The AP rebuilds each key (checked against
   its round-r public key; :func:`~semalign.common.secure_aggregation.rebuild_key` tries
   t-subsets if a share is bad, and the sender of a bad share is dropped), removes every
   arrived upload's self mask and the missing users' pair masks from the sum. A rebuilt
   masking key opens round r's pair masks only, and never an upload the AP holds: that
   upload's self mask stays on (users refuse to reveal both kinds for one user and round).

A user whose masking key was rebuilt is dropped for good (users refuse to mask with it again);
the AP refuses to decode, and asks for no shares of, a sum of fewer than t uploads; an upload
that arrives after the round's unmasking request is refused.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from semalign.common import differential_privacy as dp
from semalign.common import secure_aggregation as sa
from semalign.common.errors import ProtocolError
from semalign.common.threads import single_thread
from semalign.common.wire import check_matrix, fill_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.strategies.admm import AdmmVariables
from semalign.server.strategies.base import ApContext, UserState
from semalign.server.strategies.registry import register_ap_strategy
from semalign.server.strategies.shared_admm import SharedAdmm

log = logging.getLogger(__name__)

#: loss scalars at the end of every contribution: the user's pilot MSE per complex feature
#: ||Y - G S||^2 / (n m/2) and its objective terms (||Y - G S||^2 + n sigma^2 ||G||^2) / n
LOSS_TERMS = 2


def check_secure_request(req: pb.HandshakeRequest) -> bytes:
    """The encryption public key of a handshake for a secure session; ProtocolError if it is
    missing or invalid, or the user does not speak the compact round protocol. (Its masking
    keys, one per round, come with its shares at the setup.)"""
    if pb.COMPACT not in req.round_protocols:
        raise ProtocolError(
            "secure aggregation needs the compact round protocol, which this user does not offer"
        )
    sa.load_public(req.encryption_key, "encryption key")
    return bytes(req.encryption_key)


@register_ap_strategy("fed", aggregation="secure")
class SecureSharedAdmm(SharedAdmm):
    """Federated ADMM on masked sums: one F, Z, U for everyone, as ``fed``."""

    upload_kinds = ("secure_upload",)

    def start(self, ap: ApContext) -> None:
        super().start(ap)
        self.keys: dict[str, bytes] = {}  # user id -> encryption public key
        self.round_keys: dict[int, list[bytes]] = {}  # index -> masking public key per round
        self.self_mask_keys: dict[int, list[bytes]] = {}  # index -> self-mask public key per round
        self.stage = "keys"  # -> "shares" -> "ready" -> "done"
        self.by_index: dict[int, str] = {}  # setup participants: index -> user id
        self.threshold = 0
        self.sealed: dict[int, list[pb.SealedShare]] = {}  # recipient -> shares for it
        self.rebuilt: dict[tuple[int, int], Any] = {}  # (index, round) -> its masking key
        self.rebuilt_self: dict[tuple[int, int], Any] = {}  # (index, round) -> self-mask key
        self.recoveries: list[dict] = []
        cfg = self.config
        #: (epsilon, delta) of the T rounds under differential privacy (None: off); computed
        #: now, so that a missing accountant stops the session before it starts
        self.privacy = (
            (dp.epsilon(cfg.dp_noise_multiplier, cfg.iterations, cfg.dp_delta), cfg.dp_delta)
            if cfg.dp_noise_multiplier > 0
            else None
        )
        self._new_round([])

    def _new_round(self, participants: list[int]) -> None:
        self.participants = participants
        self.masked: dict[int, np.ndarray] = {}  # index -> this round's masked upload
        self.revealed: dict[int, dict[int, bytes]] = {}  # dropped -> sender -> share
        self.revealed_self: dict[int, dict[int, bytes]] = {}  # arrived -> sender -> share
        self.unmask_asked = False
        self.losses: tuple[float, float] | None = None

    @property
    def size(self) -> int:
        """Entries of a contribution (F's real, or real and imaginary, parts and the losses)."""
        shape = self.shared.f.shape
        return sa.contribution_size(shape, LOSS_TERMS, real=self.representation.widely_linear)

    # ------------------------------------------------------------------ handshake
    def check_request(self, request: pb.HandshakeRequest) -> None:
        """A user without keys or the compact protocol cannot take part."""
        check_secure_request(request)

    def complete_accept(
        self, state: UserState, request: pb.HandshakeRequest, accept: pb.HandshakeAccept
    ) -> None:
        super().complete_accept(state, request, accept)
        accept.aggregation = pb.SECURE
        if self.privacy is not None:
            accept.dp_noise_multiplier = self.config.dp_noise_multiplier
            accept.dp_clip = self.config.dp_clip
        self.keys.setdefault(state.user_id, check_secure_request(request))

    def check_rejoin(self, state: UserState, request: pb.HandshakeRequest) -> None:
        """A rejoin must bring the keys of the first handshake (the others' masks and shares
        were built on them)."""
        if self.keys.get(state.user_id) != request.encryption_key:
            raise ProtocolError(
                f"rejoin of {state.user_id} with other secure-aggregation keys than its first "
                "handshake (a user built afresh cannot take part again)"
            )

    # ------------------------------------------------------------------ extra exchanges
    def extra_messages(self) -> dict[str, bytes]:
        """ApMessage bytes per user of the next exchange besides the rounds (setup, delivery,
        or this round's recovery), or none."""
        if self.stage == "keys":
            self.stage = "shares"
            return self._setup_messages()
        if self.stage == "shares":
            self.stage = "ready"
            return self._deliveries()
        if self.stage == "ready":
            self.stage = "done"
            return {}
        if self.ap.expecting != "upload" or self.unmask_asked:
            return {}
        self.unmask_asked = True
        if len(self.masked) < self.threshold:  # step refuses to decode: ask for no shares
            return {}
        request = pb.UnmaskRequest(session_id=self.ap.session_id, round=self.ap.round)
        request.dropped.extend(self._missing())
        request.arrived.extend(sorted(self.masked))
        data = pb.ApMessage(unmask_request=request).SerializeToString()
        return {u.user_id: data for u in self.ap.active_users if u.index in self.masked}

    def _setup_messages(self) -> dict[str, bytes]:
        users = self.ap.active_users
        self.by_index = {u.index: u.user_id for u in users}
        self.threshold = sa.threshold_for(len(users))
        if len(users) < 2:
            raise ProtocolError("secure aggregation needs at least 2 users")
        setup = pb.SecureSetup(
            session_id=self.ap.session_id, threshold=self.threshold, double_masking=True
        )
        for state in users:
            setup.participants.add(index=state.index, encryption_key=self.keys[state.user_id])
        data = pb.ApMessage(secure_setup=setup).SerializeToString()
        return {u.user_id: data for u in users}

    def _deliveries(self) -> dict[str, bytes]:
        out = {}
        for state in self.ap.active_users:
            delivery = pb.ShareDelivery(session_id=self.ap.session_id)
            delivery.shares.extend(self.sealed.get(state.index, []))
            for index in sorted(self.round_keys):
                delivery.participants.add(index=index, round_masking_keys=self.round_keys[index])
            out[state.user_id] = pb.ApMessage(share_delivery=delivery).SerializeToString()
        return out

    def receive_extra(self, state: UserState, msg: pb.UserMessage) -> None:
        """A reply of an extra exchange: the user's sealed shares, its Ack of the delivery, or
        its shares of dropped users' keys."""
        kind = msg.WhichOneof("body")
        body = getattr(msg, kind) if kind else None
        if body is None or body.session_id != self.ap.session_id:
            raise ProtocolError(f"secure aggregation: {kind} from {state.user_id} out of place")
        if kind == "secure_shares" and self.stage == "shares":
            self._take_shares(state, body)
        elif kind == "ack" and self.stage == "ready":
            return
        elif kind == "unmask_shares" and self.unmask_asked and body.round == self.ap.round:
            self._take_revealed(state, body)
        else:
            raise ProtocolError(f"secure aggregation: {kind} from {state.user_id} out of place")

    def _take_shares(self, state: UserState, body: pb.SecureShares) -> None:
        recipients = sorted(i for i in self.by_index if i != state.index)
        got = sorted(s.recipient for s in body.shares)
        if got != recipients or any(s.sender != state.index for s in body.shares):
            raise ProtocolError(
                f"secure aggregation: {state.user_id} sent shares for {got}, expected one for "
                f"each of {recipients}"
            )
        masking = _public_keys(body.round_masking_keys, "masking", state.user_id, self.rounds)
        selfs = _public_keys(body.self_mask_keys, "self-mask", state.user_id, self.rounds)
        # Fernet: base64 of IV, the bundle of 2 T shares and its header, HMAC
        limit = 1024 + 2 * len(sa.KEY_KINDS) * self.rounds * sa.SHARE_BYTES
        for share in body.shares:
            if len(share.ciphertext) > limit:
                raise ProtocolError(f"secure aggregation: an oversized share from {state.user_id}")
            self.sealed.setdefault(share.recipient, []).append(share)
        self.round_keys[state.index], self.self_mask_keys[state.index] = masking, selfs

    def _take_revealed(self, state: UserState, body: pb.UnmaskShares) -> None:
        """A user's shares of the missing users' masking keys and of the arrived users' self-mask
        keys (exactly those)."""
        asked = (
            (body.shares, self._missing(), self.revealed, "masking"),
            (body.self_mask_shares, sorted(self.masked), self.revealed_self, "self-mask"),
        )
        for shares, owners, _, what in asked:
            got = sorted(s.owner for s in shares)
            if got != owners:
                raise ProtocolError(
                    f"secure aggregation: {state.user_id} revealed shares of the {what} keys of "
                    f"{got}, asked for {owners}"
                )
        for shares, _, kept, _ in asked:
            for share in shares:
                kept.setdefault(share.owner, {})[state.index] = bytes(share.share)

    # ------------------------------------------------------------------ rounds
    def round_messages(self) -> dict[str, bytes]:
        if self.stage != "done":
            raise ProtocolError("secure aggregation: rounds before the key setup")
        active = sorted(u.index for u in self.ap.active_users)
        if len(active) < self.threshold:
            raise ProtocolError(
                f"secure aggregation: {len(active)} users left, fewer than the threshold "
                f"{self.threshold}; the AP will not decode a sum of so few"
            )
        self._new_round(active)
        return super().round_messages()

    def complete_broadcast(self, msg: pb.CompactBroadcast, variables: AdmmVariables) -> None:
        """A round's broadcast also carries Z - U (double precision) and the participants."""
        if msg.final:
            return
        rep = self.representation
        offset = rep.to_wire(variables.z - variables.u)
        fill_matrix(msg.consensus_offset, offset, rep.wire_dtype(double=True))
        msg.participants.extend(self.participants)

    def receive_upload(self, state: UserState, upload) -> None:
        """Keep a SecureUpload's masked vector (size,) uint64 of this round."""
        ap = self.ap
        if not isinstance(upload, pb.SecureUpload):
            raise ProtocolError(f"secure aggregation: a plain upload from {state.user_id}")
        if upload.session_id != ap.session_id or upload.round != ap.round:
            raise ProtocolError(
                f"upload from {state.user_id} for round {upload.round}, expected {ap.round}"
            )
        if state.index not in self.participants:
            raise ProtocolError(f"upload from {state.user_id}, not a participant of the round")
        if self.unmask_asked:
            raise ProtocolError(f"upload from {state.user_id} after the round's unmasking request")
        what = f"secure upload from {state.user_id}"
        self.masked[state.index] = check_matrix(upload.masked, what, (self.size,), (pb.UINT64,))
        # marks the upload as in for AccessPoint.step; the sum is taken from self.masked
        state.upload = (self.masked[state.index], self.masked[state.index])

    def _missing(self) -> list[int]:
        return [i for i in self.participants if i not in self.masked]

    def step(self, users: list[UserState]) -> tuple[float, float]:
        """F = the decoded average of the uploads (eq. 8), then Z and U (eqs. 17-18)."""
        count = len(self.masked)
        if count < self.threshold:
            raise ProtocolError(
                f"secure aggregation: round {self.ap.round} has {count} uploads, fewer than "
                f"the threshold {self.threshold}"
            )
        total = self._without_self_masks(sa.ring_sum(list(self.masked.values())))
        missing = self._missing()
        for index in missing:
            total = self._unmask(total, index)
        if missing:
            self.recoveries.append({"round": self.ap.round, "users": missing})
        rep = self.representation
        values = sa.decode_sum(total) / count
        f, losses = sa.unpack_contribution(
            values, self.shared.f.shape, LOSS_TERMS, real=rep.widely_linear
        )
        # under differential privacy the users send no loss scalars: unknown here
        self.losses = (
            (float(losses[0]), float(losses[1])) if self.privacy is None else (np.nan,) * 2
        )
        with single_thread():
            return self.shared.consensus(f, self.power_budget, self.config.rho)

    def _unmask(self, total: np.ndarray, dropped: int) -> np.ndarray:
        """``total`` without the masks that the uploads carry for ``dropped``, whose masking
        key of this round is rebuilt from the survivors' shares (senders of bad shares are
        dropped)."""
        round_ = self.ap.round
        key = self.rebuilt.get((dropped, round_))
        if key is None:
            public = self.round_keys[dropped][round_]
            key = self._rebuild(dropped, self.revealed.get(dropped, {}), public, "masking key")
            self.rebuilt[(dropped, round_)] = key
        peers = {
            index: sa.load_public(self.round_keys[index][round_], f"masking key of user {index}")
            for index in self.masked
        }
        return sa.unmask_dropped(total, key, dropped, peers, self.ap.session_id, round_)

    def _without_self_masks(self, total: np.ndarray) -> np.ndarray:
        """``total`` without the self masks of this round's uploads, whose self-mask keys are
        rebuilt from the shares the users revealed (senders of bad shares are dropped)."""
        round_, keys = self.ap.round, {}
        for owner in sorted(self.masked):
            public = self.self_mask_keys[owner][round_]
            shares = self.revealed_self.get(owner, {})
            keys[owner] = self._rebuild(owner, shares, public, "self-mask key")
            self.rebuilt_self[(owner, round_)] = keys[owner]
        return sa.remove_self_masks(total, keys, self.ap.session_id, round_)

    def _rebuild(self, owner: int, revealed: dict[int, bytes], public: bytes, what: str) -> Any:
        """User ``owner``'s ``what`` of this round (the private key of ``public``) from the
        ``revealed`` shares (sender -> share); a sender whose share is not at its own position
        or not on the key's polynomial is dropped."""
        round_ = self.ap.round
        shares = dict(revealed)
        position = {index: i + 1 for i, index in enumerate(sorted(self.by_index))}
        bad = [s for s, share in shares.items() if sa.share_index(share) != position[s]]
        for sender in bad:
            del shares[sender]
        try:
            key, off = sa.rebuild_key(shares, self.threshold, public)
        except ProtocolError as exc:
            raise ProtocolError(f"{exc} (user {owner}'s {what}, round {round_})") from None
        for sender in sorted({*bad, *off}):
            self.ap.drop(
                self.by_index[sender],
                f"secure aggregation: its share of user {owner}'s round {round_} {what} "
                "is not a share of that key",
            )
        return key

    def loss_totals(self) -> tuple[float, float]:
        """(pilot MSE, objective) of the round: means over the uploads, decoded from the sum."""
        if self.losses is None:
            raise ProtocolError("secure aggregation: no decoded round")
        return self.losses

    def result_info(self) -> dict[str, Any]:
        """Besides the round protocol: ``aggregation`` (threshold, participants, recoveries)."""
        info = super().result_info()
        info["aggregation"] = {
            "mode": "secure",
            "threshold": self.threshold,
            "participants": len(self.by_index),
            "recoveries": self.recoveries,
        }
        if self.privacy is not None:
            cfg = self.config
            info["differential_privacy"] = {
                "noise_multiplier": cfg.dp_noise_multiplier,
                "clip": cfg.dp_clip,
                "epsilon": self.privacy[0],
                "delta": self.privacy[1],
                "rounds": cfg.iterations,
            }
        return info


def _public_keys(keys, what: str, user_id: str, rounds: int) -> list[bytes]:
    """A user's T public keys of one kind (``masking`` or ``self-mask``), each checked to be a
    point of the curve; ProtocolError if there are not ``rounds`` of them."""
    if len(keys) != rounds:
        raise ProtocolError(
            f"secure aggregation: {user_id} sent {len(keys)} {what} keys for {rounds} rounds"
        )
    for r, key in enumerate(keys):
        sa.load_public(key, f"round {r} {what} key of {user_id}")
    return [bytes(k) for k in keys]
