"""What the AP received in a recorded session, decoded as the AP decodes it.

:class:`ApRecorder` is a :data:`~semalign.engine.loopback.Tap`: it keeps every message the AP
takes from a user ("up") or sends it ("down"), as bytes. :func:`decode_uploads` reads one
user's recorded messages generically: every matrix of every message after the handshake is an
upload term, except the equalizer Grams A_l (field ``a``: they carry no pilots); a term with n
columns is in the pilot domain, one with c (the AP's feature count) in the feature domain,
mapped to the pilots with the AP's X (:func:`~semalign.common.privacy_audit.pilot_domain`);
masked vectors (secure aggregation: uint64, 1-D) are kept apart; anything else is listed as
ignored. ``semalign audit`` (:mod:`semalign.engine.audit`) attacks what this gives.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semalign.common import privacy_audit as pa
from semalign.common.wire import from_matrix, parse_user_message
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint

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
        features: per message with feature-domain terms, those terms as sent (rows, c).
        masked_fields: the fields they came from (``secure_upload.masked``).
    """

    rounds: list[np.ndarray] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    masked: list[np.ndarray] = field(default_factory=list)
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
