"""The user half of ``fed`` with ``--aggregation secure``: its own F-step, uploaded masked.

Compact rounds as :class:`~.admm.AdmmUser` (G-step, A_l, P_l X^H and the loss terms), then,
instead of uploading A_l and P_l X^H, the user solves its F-step (eqs. 13-14) with the broadcast
Z - U and uploads F_l in fixed point plus its pairwise masks
(:mod:`semalign.common.secure_aggregation`). A_l and P_l X^H are first rounded to the wire
precision the plain protocol sends them in, so that both compute the same F_l.

Key setup: on SecureSetup the user checks the participants (itself among them, the threshold a
majority) and that the AP removes self masks (double masking), makes one masking key pair and
one self-mask key pair per round (T of each) and answers with their public keys and their
Shamir shares, one bundle sealed for each recipient (and keeps its own); on ShareDelivery it
opens and keeps the bundles sealed for it and takes every participant's round masking keys.
Round r's upload carries the pair masks of the round-r masking keys and the self mask of the
round-r self-mask key.

Unmasking: on an UnmaskRequest for the round it just uploaded in (never another: a past
round's key would open an upload the AP holds) it reveals its shares of the self-mask keys of
the users listed as arrived (its own included) and of the masking keys of those listed as
dropped, and from then on refuses a round that lists one of the dropped as a participant. It
refuses the whole request (:meth:`SecureAdmmUser.on_unmask`, an error reply naming the reason)
when it would give both kinds of share of one user in one round, counting what it revealed
before in that round: with both, the AP could open that user's upload. The AP drops a user that
refuses, as any user that answers with an error, and the session goes on for the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from semalign.client.strategies.admm import AdmmUser
from semalign.client.strategies.registry import register_user_strategy
from semalign.common import admm
from semalign.common import differential_privacy as dp
from semalign.common import secure_aggregation as sa
from semalign.common.errors import ProtocolError
from semalign.common.packing import complex_dim
from semalign.common.threads import single_thread
from semalign.common.wire import check_matrix, to_matrix
from semalign.proto import semalign_pb2 as pb

#: the loss scalars after F_l in every contribution (as the AP's secure strategy reads them)
LOSS_TERMS = 2


@register_user_strategy("fed", aggregation="secure")
class SecureAdmmUser(AdmmUser):
    """Compact rounds with a local F-step and masked uploads."""

    #: the AP's messages besides the rounds -> their handler
    EXTRA_HANDLERS = {
        "secure_setup": "on_setup",
        "share_delivery": "on_delivery",
        "unmask_request": "on_unmask",
    }

    def on_accept(self, acc: pb.HandshakeAccept) -> None:
        if acc.round_protocol != pb.COMPACT:
            raise ProtocolError("secure aggregation without the compact round protocol")
        keys = getattr(self.user, "secure_keys", None)
        if keys is None:
            raise ProtocolError("the AP runs secure aggregation; this user has no keys")
        self.keys: sa.UserKeys = keys
        super().on_accept(acc)
        eigvals, eigvecs = np.linalg.eigh((self.pilot_gram + self.pilot_gram.conj().T) / 2)
        n = len(acc.pilot_ids)
        self.gram_factor = admm.GramFactor(np.clip(eigvals, 0.0, None), eigvecs, n)
        self.index = acc.user_index
        self.peers: dict[int, bytes] = {}  # index -> encryption public key
        self.rounds = int(acc.iterations)
        self.masking: list = []  # this user's masking private key of each round
        self.self_masks: list = []  # this user's self-mask private key of each round
        self.peer_masking: dict[int, list] = {}  # index -> masking public key of each round
        self.held: dict[int, bytes] = {}  # sender index -> its share bundle for this user
        self.round: int | None = None  # the round of the last upload
        #: (owner, round) -> the kind of share of that user's key it revealed in that round
        self.disclosed: dict[tuple[int, int], str] = {}
        self.offset: np.ndarray | None = None
        self.participants: list[int] = []
        self.threshold = 0
        #: differential privacy's noise, from the operating system's entropy (unpredictable)
        self.noise_rng = np.random.default_rng()

    # ------------------------------------------------------------------ setup
    def on_extra(self, kind: str, body: Any) -> bytes:
        """The key setup, the share delivery and the unmasking requests."""
        if kind not in self.EXTRA_HANDLERS:
            return super().on_extra(kind, body)
        return getattr(self, self.EXTRA_HANDLERS[kind])(body)

    def on_setup(self, msg: pb.SecureSetup) -> bytes:
        """Check the participants, make the round masking keys, send their public keys and
        the sealed share bundles."""
        if self.peers:
            raise ProtocolError("a second secure-aggregation setup")
        listed = {p.index: bytes(p.encryption_key) for p in msg.participants}
        if len(listed) != len(msg.participants) or listed.get(self.index) != self.keys.public:
            raise ProtocolError("secure setup: participants repeated, or this user's keys wrong")
        if msg.threshold != sa.threshold_for(len(listed)):
            raise ProtocolError(
                f"secure setup: threshold {msg.threshold} for {len(listed)} participants, "
                f"expected {sa.threshold_for(len(listed))}"
            )
        if not msg.double_masking:
            raise ProtocolError(
                "secure setup: the AP does not remove self masks (no double masking)"
            )
        order = sorted(listed)
        self.threshold = msg.threshold
        self.masking, self.self_masks = sa.round_keys(self.rounds), sa.round_keys(self.rounds)
        keys = [*self.masking, *self.self_masks]  # the order of sa.KEY_KINDS
        bundles = sa.split_round_keys(keys, msg.threshold, len(order))
        reply = pb.SecureShares(session_id=self.user.accept.session_id)
        reply.round_masking_keys.extend(sa.public_bytes(k.public_key()) for k in self.masking)
        reply.self_mask_keys.extend(sa.public_bytes(k.public_key()) for k in self.self_masks)
        for position, peer in enumerate(order):
            if peer == self.index:  # its own share of its self-mask keys: revealed when asked
                self.held[peer] = bundles[position]
                continue
            encryption = sa.load_public(listed[peer], f"encryption key of user {peer}")
            self.peers[peer] = listed[peer]
            sealed = sa.seal_share(
                sa.pair_secret(self.keys.encryption, encryption),
                self.user.accept.session_id,
                self.index,
                peer,
                bundles[position],
            )
            reply.shares.add(sender=self.index, recipient=peer, ciphertext=sealed)
        return pb.UserMessage(secure_shares=reply).SerializeToString()

    def on_delivery(self, msg: pb.ShareDelivery) -> bytes:
        """Take every participant's round masking keys; open and keep the share bundles
        sealed for this user; acknowledge."""
        session = self.user.accept.session_id
        self._take_round_keys(msg.participants)
        for share in msg.shares:
            sender = share.sender
            if share.recipient != self.index or sender not in self.peers or sender in self.held:
                raise ProtocolError(f"share delivery: a share from {sender} out of place")
            encryption = sa.load_public(self.peers[sender], "encryption key")
            secret = sa.pair_secret(self.keys.encryption, encryption)
            bundle = sa.open_share(secret, session, sender, self.index, share.ciphertext)
            sa.round_share(bundle, 0, self.rounds)  # its length: one share per round
            self.held[sender] = bundle
        ack = pb.Ack(session_id=session, round=0)
        return pb.UserMessage(ack=ack).SerializeToString()

    def _take_round_keys(self, participants) -> None:
        """Every peer's T masking public keys (and this user's own, as it sent them)."""
        listed = {p.index: list(p.round_masking_keys) for p in participants}
        own = [sa.public_bytes(k.public_key()) for k in self.masking]
        if set(listed) != {*self.peers, self.index} or listed[self.index] != own:
            raise ProtocolError("share delivery: round keys of other participants than the setup's")
        for peer in self.peers:
            if len(listed[peer]) != self.rounds:
                raise ProtocolError(f"share delivery: user {peer} has not {self.rounds} round keys")
            self.peer_masking[peer] = [
                sa.load_public(key, f"round {r} masking key of user {peer}")
                for r, key in enumerate(listed[peer])
            ]

    def on_unmask(self, msg: pb.UnmaskRequest) -> bytes:
        """Reveal this user's shares of the arrived participants' self-mask keys and of the
        dropped participants' masking keys of the round it just uploaded in; refuse the whole
        request (ProtocolError) if :meth:`_check_unmask` does."""
        round_ = msg.round
        dropped, arrived = list(dict.fromkeys(msg.dropped)), list(dict.fromkeys(msg.arrived))
        self._check_unmask(round_, dropped, arrived)
        reply = pb.UnmaskShares(session_id=self.user.accept.session_id, round=round_)
        for owners, kind, out in (
            (dropped, sa.MASKING, reply.shares),
            (arrived, sa.SELF_MASK, reply.self_mask_shares),
        ):
            for owner in owners:
                self.disclosed[(owner, round_)] = kind
                share = sa.round_share(self.held[owner], round_, self.rounds, kind)
                out.add(owner=owner, share=share)
        return pb.UserMessage(unmask_shares=reply).SerializeToString()

    @property
    def revealed(self) -> set[int]:
        """Users whose masking-key shares this user revealed (in any round): they dropped, so
        no later round may list them as participants."""
        return {owner for (owner, _), kind in self.disclosed.items() if kind == sa.MASKING}

    def _check_unmask(self, round_: int, dropped: list[int], arrived: list[int]) -> None:
        """ProtocolError unless the request is one this user answers: for the round it just
        uploaded in, listing every participant of that round once, as dropped or as arrived
        (itself arrived, at least t arrived), and asking for no user's share of the other kind
        than the one this user revealed for it in this round already."""
        if round_ != self.round:
            raise ProtocolError(
                f"unmask request for round {round_}; this user's last upload was round {self.round}"
            )
        if sorted([*dropped, *arrived]) != self.participants:
            raise ProtocolError(
                f"unmask request listing dropped {sorted(dropped)} and arrived {sorted(arrived)}, "
                f"not the participants {self.participants} of round {round_} once each"
            )
        unknown = [owner for owner in [*dropped, *arrived] if owner not in self.held]
        if unknown:
            raise ProtocolError(f"unmask request for users {unknown}, whose shares this user lacks")
        if self.index in dropped or len(arrived) < self.threshold:
            raise ProtocolError(
                f"unmask request for round {round_} listing this user's upload as missing, or "
                f"fewer arrived uploads than the threshold {self.threshold}"
            )
        for owners, kind in ((dropped, sa.MASKING), (arrived, sa.SELF_MASK)):
            for owner in owners:
                before = self.disclosed.get((owner, round_), kind)
                if before != kind:
                    raise ProtocolError(
                        f"refused: a share of user {owner}'s {kind} key of round {round_} after "
                        f"its {before} key's: both would open that user's upload"
                    )

    # ------------------------------------------------------------------ rounds
    def on_compact_broadcast(self, msg: pb.CompactBroadcast) -> bytes:
        """Take Z - U and the participants, then the compact round (which ends in
        :meth:`_upload`)."""
        if not msg.final:
            participants = list(msg.participants)
            known = set(self.peers) | {self.index}
            if self.index not in participants or not set(participants) <= known:
                raise ProtocolError("secure round: participants this user has no keys for")
            if self.revealed & set(participants):
                raise ProtocolError("secure round: a participant whose masking key was revealed")
            if len(set(participants)) < sa.threshold_for(len(known)):
                raise ProtocolError("secure round: fewer participants than the threshold")
            self.participants = sorted(set(participants))
            rep = self.representation
            shape = (rep.symbol_rows(self.user.accept.channel_uses * self.user.accept.antennas_tx),)
            shape += (self.pilot_gram.shape[0],)
            offset = check_matrix(msg.consensus_offset, "Z - U", shape, rep.wire_codes)
            self.offset = offset.astype(np.complex128)
        return super().on_compact_broadcast(msg)

    def _upload(
        self, kind: str, round_: int, a: np.ndarray, term: np.ndarray, sq: float, noise: float
    ) -> bytes:
        """The masked contribution: F_l (eqs. 13-14) and the loss scalars, in fixed point, plus
        the pairwise masks of this round."""
        if kind != "compact_upload" or self.offset is None:
            raise ProtocolError("secure aggregation: a round without Z - U")
        rep, acc = self.representation, self.user.accept
        wire = rep.wire_dtype()
        a = rep.to_wire(a).astype(wire).astype(np.complex128)  # as the plain AP reads them
        cross = rep.to_wire(term).astype(wire).astype(np.complex128)
        zero = np.zeros_like(self.offset)
        with single_thread():
            f = admm.f_step_from_cross(a, cross, self.gram_factor, self.offset, zero, acc.rho)
        n = self.gram_factor.n
        losses = (sq / (n * complex_dim(self.user.latent_dim)), (sq + noise) / n)
        if acc.dp_noise_multiplier > 0:  # the Gaussian mechanism; no loss scalars leave
            std = dp.user_noise_std(acc.dp_noise_multiplier, acc.dp_clip, self.threshold)
            f = dp.add_noise(dp.clip(f, acc.dp_clip), std, self.noise_rng)
            losses = (0.0, 0.0)
        values = sa.pack_contribution(f, losses, real=rep.widely_linear)
        if not 0 <= round_ < self.rounds:
            raise ProtocolError(f"secure aggregation: round {round_} has no masking key")
        key = self.masking[round_]
        peers = {
            p: sa.pair_secret(key, self.peer_masking[p][round_])
            for p in self.participants
            if p != self.index
        }
        masked = (
            sa.quantize(values, len(self.participants))
            + sa.mask_sum(self.index, peers, acc.session_id, round_, len(values))
            + sa.self_mask(self.self_masks[round_], acc.session_id, self.index, round_, len(values))
        )
        self.offset = None
        self.round = round_
        upload = pb.SecureUpload(session_id=acc.session_id, round=round_)
        upload.masked.CopyFrom(to_matrix(masked, "uint64"))
        return pb.UserMessage(secure_upload=upload).SerializeToString()
