"""The datasets by name: ``load_dataset("fashion_mnist")`` and the names the config accepts."""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import DataError, Dataset
from .cifar10 import load_cifar10
from .fashion_mnist import load_fashion_mnist
from .mnist import load_mnist

Loader = Callable[..., Dataset]

#: name -> loader(data_dir, *, verify_checksums); the names of ``data.name`` (configs/data/<name>.yaml).
DATASETS: dict[str, Loader] = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, verify_checksums: bool = True
) -> Dataset:
    """Loads the dataset ``name`` (one of :data:`DATASETS`) from ``data_dir`` or its default source."""
    loader = DATASETS.get(name)
    if loader is None:
        raise DataError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASETS)} (data=<name>).")
    return loader(data_dir, verify_checksums=verify_checksums)
