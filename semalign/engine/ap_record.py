"""What the AP received in a recorded session, decoded as the AP decodes it.

:class:`ApRecorder` is a :data:`~semalign.engine.loopback.Tap`: it keeps every message the AP
takes from a user ("up") or sends it ("down"), as bytes. :func:`decode_uploads` reads one
user's recorded messages generically: every matrix of every message after the handshake is an
upload term, except the equalizer Grams A_l (field ``a``: they carry no pilots); a term with n
columns is in the pilot domain, one with c (the AP's feature count) in the feature domain,
mapped to the pilots with the AP's X (:func:`~semalign.common.privacy_audit.pilot_domain`);
masked vectors (secure aggregation: uint64, 1-D) are kept apart; anything else is listed as
ignored. For secure aggregation, :func:`secure_record` reads what the AP holds of the keys
(threshold, every round's masking public keys, the shares the survivors revealed after a
drop), :func:`rebuilt_keys` rebuilds every masking key those shares give, with the AP's own
functions (:mod:`semalign.common.secure_aggregation`), and :func:`open_upload` removes the
masks a key removes from one recorded upload. ``semalign audit``
(:mod:`semalign.engine.audit`) attacks what this gives.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semalign.common import privacy_audit as pa
from semalign.common import secure_aggregation as sa
from semalign.common.errors import ProtocolError
from semalign.common.wire import from_matrix, parse_user_message
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint

log = logging.getLogger(__name__)

#: upload fields that carry no pilots: A_l = (G_l H_l)^H (G_l H_l)
GRAM_FIELDS = ("a",)
#: message kinds that carry no upload (the handshake's CSI is the channel, not the pilots)
NOT_UPLOADS = ("handshake", "ack", "report", "error")


class ApRecorder:
    """Every message the AP took from each user (``messages``) and sent to it (``sent``), as
    bytes, in order (a :data:`~semalign.engine.loopback.Tap`)."""

    def __init__(self) -> None:
        self.messages: dict[str, list[bytes]] = defaultdict(list)
        self.sent: dict[str, list[bytes]] = defaultdict(list)

    def __call__(self, user_id: str, direction: str, data: bytes) -> None:
        (self.messages if direction == "up" else self.sent)[user_id].append(data)


def message_matrices(message: Any, prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """Every Matrix set in a proto message, depth first: (dotted field path, decoded array)."""
    out = []
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        path = f"{prefix}{descriptor.name}"
        values = value if descriptor.is_repeated else [value]
        for item in values:
            if isinstance(item, pb.Matrix):
                out.append((path, from_matrix(item)))
            else:
                out.extend(message_matrices(item, path + "."))
    return out


@dataclass
class Uploads:
    """One user's uploads as the AP decoded them: per message, its pilot-domain terms.

    Attributes:
        rounds: per upload message, its terms stacked in the pilot domain (rows, n).
        fields: the fields used (``upload.p``, ``compact_upload.cross``, ...).
        ignored: fields whose shape is neither (., n) nor (., c).
        masked: per message with masked vectors (uint64, 1-D), their concatenation.
        masked_rounds: the round each of ``masked`` was sent for (the message's ``round``).
        features: per message with feature-domain terms, those terms as sent (rows, c).
        masked_fields: the fields they came from (``secure_upload.masked``).
    """

    rounds: list[np.ndarray] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    masked: list[np.ndarray] = field(default_factory=list)
    masked_rounds: list[int] = field(default_factory=list)
    masked_fields: list[str] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)


def decode_uploads(messages: list[bytes], ap: AccessPoint) -> Uploads:
    """The upload terms in ``messages`` (one user's recorded bytes), in the pilot domain."""
    out = Uploads()
    gram = ap.x @ ap.x.conj().T
    for data in messages:
        message = parse_user_message(data)
        kind = message.WhichOneof("body")
        if kind in NOT_UPLOADS:
            continue
        terms, masked, features = [], [], []
        for path, array in message_matrices(getattr(message, kind), kind + "."):
            if array.dtype == np.uint64 and array.ndim == 1:
                masked.append(array)
                _add(out.masked_fields, path)
                continue
            if path.rsplit(".", 1)[-1] in GRAM_FIELDS or array.ndim != 2:
                continue
            columns = array.shape[1]
            if columns == ap.n:
                terms.append(array.astype(np.complex128))
            elif columns == ap.cdim:
                features.append(array.astype(np.complex128))
                terms.append(pa.pilot_domain(features[-1], ap.x, gram))
            else:
                _add(out.ignored, path)
                continue
            _add(out.fields, path)
        if terms or masked:  # a masked upload is a round with no term
            out.rounds.append(np.vstack(terms) if terms else np.zeros((0, ap.n), complex))
        if masked:
            out.masked.append(np.concatenate(masked))
            out.masked_rounds.append(int(getattr(getattr(message, kind), "round", -1)))
        if features:
            out.features.append(np.vstack(features))
    return out


def _add(names: list[str], name: str) -> None:
    if name not in names:
        names.append(name)


def sent_pre_equalizers(messages: list[bytes]) -> list[np.ndarray]:
    """The F_t (rows, c) of the compact round broadcasts in ``messages`` (what the AP sent one
    user), in order, the final broadcast left out."""
    out = []
    for data in messages:
        message = pb.ApMessage.FromString(data)
        if (
            message.WhichOneof("body") == "compact_broadcast"
            and not message.compact_broadcast.final
        ):
            out.append(from_matrix(message.compact_broadcast.pre_equalizer).astype(np.complex128))
    return out


@dataclass
class SecureRecord:
    """What the AP holds of a secure session's keys, read from the recorded messages.

    Attributes:
        session_id: the session the masks are derived for.
        threshold: shares needed to rebuild a masking key.
        round_keys: participant index -> its masking public key of each round.
        participants: round -> the participants' indices the round's broadcast listed.
        revealed: (owner index, round) -> sender index -> the share the sender revealed.
    """

    session_id: str = ""
    threshold: int = 0
    round_keys: dict[int, list[bytes]] = field(default_factory=dict)
    participants: dict[int, list[int]] = field(default_factory=dict)
    revealed: dict[tuple[int, int], dict[int, bytes]] = field(default_factory=dict)


def secure_record(recorder: ApRecorder, ap: AccessPoint) -> SecureRecord | None:
    """The AP's key material of a recorded secure session (``None`` if it had no setup)."""
    out = SecureRecord()
    for user_id, messages in recorder.sent.items():
        for data in messages:
            message = pb.ApMessage.FromString(data)
            kind = message.WhichOneof("body")
            body = getattr(message, kind) if kind else None
            if kind == "secure_setup":
                out.session_id, out.threshold = body.session_id, int(body.threshold)
            elif kind == "share_delivery":
                for p in body.participants:
                    out.round_keys[int(p.index)] = [bytes(k) for k in p.round_masking_keys]
            elif kind == "compact_broadcast" and not body.final and body.participants:
                out.participants[int(body.round)] = [int(i) for i in body.participants]
        sender = ap.users[user_id].index
        for data in recorder.messages[user_id]:
            message = parse_user_message(data)
            if message.WhichOneof("body") != "unmask_shares":
                continue
            body = message.unmask_shares
            for share in body.shares:
                key = (int(share.owner), int(body.round))
                out.revealed.setdefault(key, {})[sender] = bytes(share.share)
    return out if out.threshold else None


def rebuilt_keys(record: SecureRecord) -> dict[tuple[int, int], Any]:
    """(owner index, round) -> the masking private key the revealed shares rebuild, checked
    against that round's registered public key (:func:`~semalign.common.secure_aggregation.
    rebuild_key`, as the AP does); keys the shares do not rebuild are left out (logged)."""
    out = {}
    for (owner, round_), shares in record.revealed.items():
        public = record.round_keys.get(owner, [])
        if round_ >= len(public):
            log.warning("revealed shares of user %d for round %d: no such key", owner, round_)
            continue
        try:
            out[owner, round_], _ = sa.rebuild_key(shares, record.threshold, public[round_])
        except ProtocolError as exc:
            log.warning("user %d, round %d: %s", owner, round_, exc)
    return out


def open_upload(
    vector: np.ndarray, owner: int, round_: int, key: Any, record: SecureRecord
) -> np.ndarray | None:
    """User ``owner``'s masked upload ``vector`` (size,) uint64 of ``round_`` without the
    pair masks that the masking private ``key`` derives with the round's other participants,
    decoded (size,) float; ``None`` if the result is not a contribution: some entry at or
    beyond the fixed-point limit every honest contribution is held below
    (:func:`~semalign.common.secure_aggregation.value_limit`, 2^26 / P for P participants).
    Masks left in decode uniform on [-2^27, 2^27): all ``size`` entries fall below the limit
    with probability (2 P)^-size."""
    participants = record.participants.get(round_, [])
    peers = [i for i in participants if i != owner and round_ < len(record.round_keys.get(i, []))]
    if owner not in participants or not peers:
        return None
    secrets = {
        i: sa.pair_secret(key, sa.load_public(record.round_keys[i][round_], "masking key"))
        for i in peers
    }
    masks = sa.mask_sum(owner, secrets, record.session_id, round_, len(vector))
    values = sa.decode_sum(vector - masks)
    return values if np.all(np.abs(values) < sa.value_limit(len(participants))) else None
