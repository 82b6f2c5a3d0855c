"""What a user's evaluation compares its estimate with: an encoder's test latents whitened and
its task model's native accuracy on them, computed from the user's data alone (and so kept once
per encoder by :meth:`~semalign.client.user.UserData.evaluation_reference`), and the content
key of the ids it is kept under.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from semalign.common.classifier import ScoreClassifier
from semalign.common.representation import Representation
from semalign.common.whitening import Whitener


class EvaluationData(Protocol):
    """What the reference reads of a user's data (:class:`~semalign.client.user.UserData`)."""

    test_latents: np.ndarray  # (n_test, m) real native latents
    test_labels: np.ndarray  # (n_test,)
    classifier: ScoreClassifier


def evaluation_reference(
    data: EvaluationData, ids: np.ndarray, whitener: Whitener, representation: Representation
) -> tuple[np.ndarray, float]:
    """:meth:`~semalign.client.user.UserData.evaluation_reference` computed afresh (each user did
    before the cache): the test rows ``ids`` of ``data`` whitened by ``whitener``, (m/2,
    len(ids)) complex (or (m, len(ids)) widely-linear), read-only, and the native accuracy."""
    native = np.asarray(np.asarray(data.test_latents)[ids], dtype=np.float64)
    labels = np.asarray(data.test_labels)[ids]
    whitened = whitener.whiten(representation.features(native))
    whitened.setflags(write=False)  # shared by the users of this data
    return whitened, float(data.classifier.accuracy(native, labels))


def content_key(values: Sequence[int] | np.ndarray) -> str:
    """Content key of integer ids (their int64 bytes)."""
    ids = np.ascontiguousarray(values, dtype=np.int64)
    return hashlib.blake2b(ids.view(np.uint8), digest_size=16).hexdigest()
