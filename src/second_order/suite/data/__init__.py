"""The suite's datasets: MNIST, Fashion-MNIST and CIFAR-10, loaded into one normalised container.

``load_dataset(name, data_dir, verify_checksums=...)`` returns a :class:`Dataset`:
images flattened to ``(N, H*W*C)`` float32 (``image_shape`` gives ``(H, W, C)``),
normalised per dataset, labels ``(N,)`` int32. Each dataset is read from a
directory (``data.dir``, else an environment variable, else a default), else
downloaded through TensorFlow Datasets' download manager (no TensorFlow needed):

- ``mnist`` (:mod:`.mnist`): IDX files (:mod:`.idx`), ``$MNIST_DIR``.
- ``fashion_mnist`` (:mod:`.fashion_mnist`): IDX files, ``$FASHION_MNIST_DIR``, else
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
- ``cifar10`` (:mod:`.cifar10`): the binary batch files, ``$CIFAR10_DIR``.

Every failure raises :class:`DataError` with one message naming the file and the fix.
"""

from .base import DataError, Dataset, Mnist
from .cifar10 import load_cifar10, write_cifar10_batch
from .fashion_mnist import load_fashion_mnist
from .idx import write_idx
from .mnist import load_mnist, normalize
from .registry import DATASETS, load_dataset

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "Mnist",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "normalize",
    "write_cifar10_batch",
    "write_idx",
]
