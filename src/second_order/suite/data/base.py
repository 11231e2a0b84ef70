"""What every dataset shares: the error type, the container, normalisation, the directory lookup."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NUM_CLASSES = 10  # MNIST, Fashion-MNIST and CIFAR-10 alike


class DataError(Exception):
    """A dataset could not be loaded; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A normalised image-classification dataset.

    Images are flattened to ``(N, H*W*C)`` float32 (so an MLP takes them as they
    are; a CNN reshapes them to ``(N, *image_shape)``, channels last), labels are
    ``(N,)`` int32 in ``0 .. num_classes - 1``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    name: str = "mnist"
    image_shape: tuple[int, int, int] = (28, 28, 1)  # (H, W, C)
    num_classes: int = NUM_CLASSES

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, image_shape={self.image_shape}, "
            f"train={self.train_images.shape}, test={self.test_images.shape})"
        )


#: The name the MNIST-only loader gave its container; the same class.
Mnist = Dataset


def normalize_hwc(images_uint8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x / 255 - mean[c]) / std[c]`` in float32 for images ``(N, H, W, C)``, flattened to ``(N, H*W*C)``.

    Computed in place on the float32 copy (no temporary of the whole set), with
    the same float32 operations in the same order as a per-value lookup table.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != len(mean) or len(std) != len(mean):
        raise ValueError(f"need uint8 images (N, H, W, {len(mean)}), got {images.dtype} {images.shape}")
    out = images.astype(np.float32)
    out /= np.float32(255)
    out -= np.asarray(mean, dtype=np.float32)
    out /= np.asarray(std, dtype=np.float32)
    return out.reshape(len(out), int(np.prod(out.shape[1:])))


def resolve_directory(
    data_dir: str | os.PathLike[str] | None, env_var: str, default: Path | None = None
) -> tuple[Path | None, str]:
    """``(directory, origin)``: ``data_dir``, else ``$env_var``, else ``default`` when it exists, else ``None``.

    ``None`` and ``""`` both mean unset. ``origin`` says where the directory came
    from, for error messages ("given", "from $MNIST_DIR", ...).
    """
    if data_dir is not None and data_dir != "":
        return Path(data_dir).expanduser(), "given"
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser(), f"from ${env_var}"
    if default is not None and default.is_dir():
        return default, "the default"
    return None, "unset"


def check_directory(directory: Path, origin: str, title: str, fix: str) -> None:
    """Raises :class:`DataError` unless ``directory`` is a directory."""
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise DataError(f"{title} directory {directory} ({origin}) {what}. {fix}")
