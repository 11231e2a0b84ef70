"""Steps at which something happens "every k steps", counted within each epoch.

Counting from each epoch's first step (``(step mod steps_per_epoch) mod k = 0``) rather
than from the run's first step keeps these points on the boundaries of the trainer's
chunks (aligned to multiples of ``chunk_steps`` inside an epoch, see
:class:`~.sampler.EpochSampler`): when ``k`` is a multiple of ``chunk_steps`` no new
chunk shape (and no new compilation) is needed, and a resumed run meets the same points.
"""

from __future__ import annotations


def due(step: int, steps_per_epoch: int, every: int) -> bool:
    """Whether ``step`` is one of the points (every epoch's first step is)."""
    return (step % steps_per_epoch) % every == 0


def next_due(step: int, steps_per_epoch: int, every: int) -> int:
    """The first point after ``step``: the next multiple of ``every`` in its epoch, or the next epoch's start."""
    epoch, pos = divmod(step, steps_per_epoch)
    return min(epoch * steps_per_epoch + (pos // every + 1) * every, (epoch + 1) * steps_per_epoch)
