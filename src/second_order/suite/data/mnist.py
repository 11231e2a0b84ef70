"""MNIST (LeCun, Cortes & Burges; http://yann.lecun.com/exdb/mnist/): 60000 + 10000 digits, 28x28x1.

Images come back flattened to ``(N, 784)`` float32 and normalised as

    x_norm = (x / 255 - MNIST_MEAN) / MNIST_STD,   MNIST_MEAN = 0.1307, MNIST_STD = 0.3081

(the training set's pixel mean and standard deviation) computed in float32;
labels are ``(N,)`` int32. Two sources, in this order:

1. A directory holding the four canonical IDX files (``data_dir`` argument, else the
   ``MNIST_DIR`` environment variable); see :mod:`.idx` for the format and checks.
2. When neither is set: TensorFlow Datasets downloads the same four files (from the
   mirror and with the SHA-256 checksums its own ``mnist`` builder registers) into
   its download cache; they are then read exactly as in 1 (see :mod:`.tfds_download`).

Every failure raises :class:`DataError` with one message naming the file and the fix.
"""

from __future__ import annotations

import os

import numpy as np

from . import idx, tfds_download
from .base import Dataset, normalize_hwc, resolve_directory

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
ENV_VAR = "MNIST_DIR"
MD5 = {  # of the uncompressed canonical files
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPEC = idx.IdxDataset(name="mnist", title="MNIST", md5=MD5, mean=MNIST_MEAN, std=MNIST_STD)
# The mirror TFDS's own `mnist` builder downloads from (its URL checksums are registered).
TFDS_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"

HINTS = tfds_download.Hints(
    title="MNIST",
    env_var=ENV_VAR,
    files=f"the four IDX files ({idx.ALL_FILES})",
    unset=f"data.dir and {ENV_VAR} are unset",
)
_DIR_FIX = (
    f"Put the four IDX files ({idx.ALL_FILES}; gzipped or not) in that directory "
    f"(e.g. from {TFDS_MNIST_URL}, the mirror TFDS uses; the original site often refuses downloads), "
    f"set data.dir=<dir> / {ENV_VAR} "
    "to a directory that has them, or leave both unset to download through "
    "TensorFlow Datasets."
)


def normalize(images_uint8: np.ndarray) -> np.ndarray:
    """``(x / 255 - MNIST_MEAN) / MNIST_STD`` in float32, flattened to ``(N, 784)``."""
    images = np.asarray(images_uint8, dtype=np.uint8)
    return normalize_hwc(images.reshape(len(images), idx.IMAGE_SIDE, idx.IMAGE_SIDE, 1), [MNIST_MEAN], [MNIST_STD])


def load_mnist(data_dir: str | os.PathLike[str] | None = None, *, verify_checksums: bool = True) -> Dataset:
    """Loads MNIST from ``data_dir``, else ``$MNIST_DIR``, else TensorFlow Datasets.

    ``None`` and ``""`` both mean unset. ``verify_checksums=False`` skips only the MD5
    comparison; headers, sizes and counts are always checked.
    """
    directory, origin = resolve_directory(data_dir, ENV_VAR)
    if directory is None:
        return _load_tfds(verify_checksums=verify_checksums)
    return idx.load_directory(SPEC, directory, origin, verify_checksums, _DIR_FIX)


def _load_tfds(*, verify_checksums: bool = True, download_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Downloads the four IDX files from ``TFDS_MNIST_URL`` with TensorFlow Datasets and reads them."""
    urls = {name: f"{TFDS_MNIST_URL}{name}.gz" for name in MD5}
    paths = tfds_download.download(urls, HINTS, TFDS_MNIST_URL, download_dir)
    return idx.load_files(SPEC, paths, verify_checksums, HINTS.corrupt_fix)
