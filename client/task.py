"""A user's private data for the research options of :class:`AlignmentConfig`.

``task_model`` picks the user's task model (:mod:`semalign.common.task_models`), ``target``
what it aligns (:mod:`semalign.common.targets`), ``pilot_selection`` whether it holds every
train point as a candidate pilot (the AP then chooses, :mod:`semalign.common.pilots`). With
the defaults this is :func:`~semalign.client.user.user_data_from_cache` exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from semalign.client.user import UserData, user_data_from_cache
from semalign.common.config import PAPER_TASK_MODEL, AlignmentConfig


def is_default(config: AlignmentConfig) -> bool:
    """Whether ``config`` uses the paper's user side (MLP task model, latents, first pilots)."""
    return (
        config.task_model == PAPER_TASK_MODEL
        and config.target == "latents"
        and config.pilot_selection == "first"
    )


def data_key(config: AlignmentConfig) -> tuple:
    """What of ``config`` a user's data depends on."""
    if is_default(config):
        return (config.pilot_fraction,)
    fraction = config.pilot_fraction if config.pilot_selection == "first" else 1.0
    return (fraction, config.task_model, config.target, config.target_dim)


def task_user_data(
    latents_dir: str | Path, encoder: str, config: AlignmentConfig, *, classifier_seed: int = 0
) -> UserData:
    """The user's pilots and test data in its target space, and the head that scores them.

    Pilots are the first ``pilot_fraction`` of train, or every train point when the AP selects
    them (``pilot_selection`` other than ``first``). The task model is trained on the native
    train latents (never on anything received).
    """
    if is_default(config):
        return user_data_from_cache(
            latents_dir, encoder, config.pilot_fraction, classifier_seed=classifier_seed
        )
    from semalign.common.latents import load_encoder_splits, load_task_model, pilot_count
    from semalign.common.targets import task_target

    splits = load_encoder_splits(latents_dir, encoder)
    train, test = splits["train"], splits["test"]
    model = load_task_model(
        latents_dir, encoder, train, kind=config.task_model, seed=classifier_seed
    )
    transform, head = task_target(model, config.target, train.latents, config.target_dim)
    n = (
        len(train.labels)
        if config.pilot_selection != "first"
        else pilot_count(len(train.labels), config.pilot_fraction)
    )
    return UserData(
        pilot_ids=np.arange(n, dtype=np.int64),
        pilot_latents=transform(train.latents[:n]),
        test_latents=transform(test.latents),
        test_labels=test.labels,
        classifier=head,
    )
