"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747; https://github.com/zalandoresearch/fashion-mnist).

60000 + 10000 Zalando article images, 28x28x1, 10 classes (6000 per class in
train, 1000 in test), in the same four IDX files as MNIST (see :mod:`.idx`).
Images come back flattened to ``(N, 784)`` float32, normalised as

    x_norm = (x / 255 - 0.2860) / 0.3530

(the training set's pixel mean 0.28604 and standard deviation 0.35302, computed
here over all 60000 x 784 training pixels), labels ``(N,)`` int32. Sources, in
this order:

1. ``data_dir``, else ``$FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist``
   when it exists (Debian's ``apt-get install dataset-fashion-mnist`` puts the four
   ``.gz`` files there); the directory must hold the four IDX files.
2. Otherwise TensorFlow Datasets downloads them from the mirror its ``fashion_mnist``
   builder uses (with the SHA-256 it registers), as for MNIST.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import idx, tfds_download
from .base import Dataset, resolve_directory

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
ENV_VAR = "FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
# MD5 of the *uncompressed* canonical files (the .gz bytes differ between upstream and
# Debian, whose gzip headers differ). Computed here from Debian's files, and equal to
# the MD5s of the decompressed upstream files listed independently in public code
# (torchvision-derived FashionMNIST classes, `raw_data`; a MindSpore dataset guide that
# runs md5sum after gunzip). Upstream's README lists only the .gz MD5s (train images
# 8d4fb7e6c68d591d4c3dfef9ec88bf0d, ...) and TFDS's url_checksums/fashion_mnist.txt
# only the .gz SHA-256s; the sizes (47040016, 60008, 7840016, 10008 bytes) follow
# from the IDX headers.
MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
SPEC = idx.IdxDataset(
    name="fashion_mnist", title="Fashion-MNIST", md5=MD5, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD
)
# The mirror of TFDS's `fashion_mnist` builder (tensorflow_datasets/image_classification/mnist.py).
TFDS_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

_DIR_FIX = (
    f"Put the four IDX files ({idx.ALL_FILES}; gzipped or not) in that directory "
    "(apt-get install dataset-fashion-mnist puts them in "
    f"{DEBIAN_DIR}; or from https://github.com/zalandoresearch/fashion-mnist), set "
    f"data.dir=<dir> / {ENV_VAR} to a directory that has them, or leave both unset to use "
    f"{DEBIAN_DIR}, else TensorFlow Datasets."
)


def _hints() -> tfds_download.Hints:
    return tfds_download.Hints(
        title="Fashion-MNIST",
        env_var=ENV_VAR,
        files=f"the four IDX files ({idx.ALL_FILES})",
        unset=f"data.dir and {ENV_VAR} are unset and {DEBIAN_DIR} does not exist",
    )


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None, *, verify_checksums: bool = True) -> Dataset:
    """Loads Fashion-MNIST from ``data_dir``, else ``$FASHION_MNIST_DIR``, else Debian's directory, else TFDS."""
    directory, origin = resolve_directory(data_dir, ENV_VAR, DEBIAN_DIR)
    if directory is None:
        return _load_tfds(verify_checksums=verify_checksums)
    return idx.load_directory(SPEC, directory, origin, verify_checksums, _DIR_FIX)


def _load_tfds(*, verify_checksums: bool = True, download_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Downloads the four IDX files from ``TFDS_FASHION_MNIST_URL`` with TensorFlow Datasets and reads them."""
    urls = {name: f"{TFDS_FASHION_MNIST_URL}{name}.gz" for name in MD5}
    hints = _hints()
    paths = tfds_download.download(urls, hints, TFDS_FASHION_MNIST_URL, download_dir)
    return idx.load_files(SPEC, paths, verify_checksums, hints.corrupt_fix)
