"""Which examples each step sees: one fresh permutation per epoch, derived from the seed."""

from __future__ import annotations

import jax


class EpochSampler:
    """Batch indices ``[steps_per_epoch, batch_size]`` of each epoch, on the device.

    Epoch ``e`` uses ``permutation(fold_in(key, e), n)``; its first
    ``steps_per_epoch · batch_size`` entries make the batches, so the last partial
    batch is dropped (32 images of MNIST at batch 64) and, since every epoch
    reshuffles, no example is systematically left out.  A pure function of
    ``(key, epoch)``: a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, key: jax.Array, num_examples: int, batch_size: int):
        if batch_size > num_examples:
            raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training examples")
        self.key = key
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.steps_per_epoch = num_examples // batch_size
        self._epoch = -1
        self._indices = jax.numpy.zeros((0, batch_size), jax.numpy.int32)

    def epoch_indices(self, epoch: int) -> jax.Array:
        if epoch != self._epoch:
            perm = jax.random.permutation(jax.random.fold_in(self.key, epoch), self.num_examples)
            self._indices = perm[: self.steps_per_epoch * self.batch_size].reshape(
                self.steps_per_epoch, self.batch_size
            )
            self._epoch = epoch
        return self._indices

    def chunk(self, step: int, max_len: int, last_step: int) -> jax.Array:
        """Indices of steps ``step+1 … step+k``: at most ``max_len``, within one epoch, ≤ ``last_step``.

        Chunks are aligned to multiples of ``max_len`` inside an epoch, so a resumed
        run compiles the same chunk shapes as an uninterrupted one.
        """
        epoch, pos = divmod(step, self.steps_per_epoch)
        k = min(max_len - pos % max_len, self.steps_per_epoch - pos, last_step - step)
        return self.epoch_indices(epoch)[pos : pos + k]
