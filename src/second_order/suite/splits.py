"""A validation split carved from the training set (tuning never looks at the test set).

The held-out examples are the last ``n`` of one fixed permutation of the training set
(NumPy ``default_rng(SPLIT_SEED)``), the same for every run, seed and method, so all
tuning trials and final runs of a study are validated on the same examples and train
on the same ``N − n``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SPLIT_SEED = 20231  # fixed: the split must not follow the run seed


def hold_out(data: Any, n: int) -> tuple[Any, tuple[np.ndarray, np.ndarray] | None]:
    """``(data with n training examples removed, (images, labels) of those n)``; ``n = 0``: ``(data, None)``.

    ``data`` is a dataclass with ``train_images`` and ``train_labels`` (the suite's datasets).
    """
    if n == 0:
        return data, None
    total = len(data.train_labels)
    if not 0 < n < total:
        raise ValueError(f"cannot hold out {n} of {total} training examples")
    order = np.random.default_rng(SPLIT_SEED).permutation(total)
    keep, held = np.sort(order[: total - n]), np.sort(order[total - n :])
    train = dataclasses.replace(data, train_images=data.train_images[keep], train_labels=data.train_labels[keep])
    return train, (data.train_images[held], data.train_labels[held])
