"""The IDX format of MNIST and Fashion-MNIST: reader, checks and writer.

An IDX file is a big-endian header, then the items as unsigned bytes: images
``[magic 2051, N, 28, 28]`` + ``N*28*28`` pixels (row-major), labels
``[magic 2049, N]`` + ``N`` labels (http://yann.lecun.com/exdb/mnist/, "FILE
FORMATS"). Each dataset has the same four files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``),
gzipped (``<name>.gz``, preferred when both are there) or not. Headers, sizes and
counts are always checked; with ``verify_checksums`` a file holding the canonical
number of items (60000 train / 10000 test) must also match the MD5 of the
*uncompressed* official file (gzip headers differ between mirrors and
repackagings, e.g. Debian's); other counts (small synthetic test sets) are
accepted without a checksum.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from .base import NUM_CLASSES, DataError, Dataset, check_directory, normalize_hwc

IMAGE_SIDE = 28
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

Split = Literal["train", "t10k"]
SPLITS: tuple[Split, ...] = ("train", "t10k")
IMAGES_FILE = {"train": "train-images-idx3-ubyte", "t10k": "t10k-images-idx3-ubyte"}
LABELS_FILE = {"train": "train-labels-idx1-ubyte", "t10k": "t10k-labels-idx1-ubyte"}
CANONICAL_COUNT = {"train": 60000, "t10k": 10000}
ALL_FILES = ", ".join(f"{IMAGES_FILE[s]}.gz, {LABELS_FILE[s]}.gz" for s in SPLITS)


@dataclasses.dataclass(frozen=True)
class IdxDataset:
    """One dataset in IDX format: its names, checksums and normalisation."""

    name: str  # the registry's name, e.g. "fashion_mnist"
    title: str  # for messages, e.g. "Fashion-MNIST"
    md5: Mapping[str, str]  # of the uncompressed canonical files, by canonical name
    mean: float  # of the training pixels scaled to [0, 1]
    std: float


def load_directory(spec: IdxDataset, directory: Path, origin: str, verify_checksums: bool, fix: str) -> Dataset:
    """Finds the four files in ``directory`` (``<name>.gz``, else ``<name>``) and reads them."""
    check_directory(directory, origin, spec.title, fix)
    paths = {}
    for split in SPLITS:
        for name in (IMAGES_FILE[split], LABELS_FILE[split]):
            gz, raw = directory / f"{name}.gz", directory / name
            if gz.is_file():
                paths[name] = gz
            elif raw.is_file():
                paths[name] = raw
            else:
                raise DataError(f"{spec.title} file {gz} is missing (nor is there an uncompressed {raw.name}). {fix}")
    return load_files(spec, paths, verify_checksums, fix)


def load_files(spec: IdxDataset, paths: Mapping[str, Path], verify_checksums: bool, fix: str) -> Dataset:
    """Reads and checks the four files ``{canonical name: path}``."""
    arrays = {}
    for split in SPLITS:
        images_path, labels_path = paths[IMAGES_FILE[split]], paths[LABELS_FILE[split]]
        images = read_idx(spec, images_path, IMAGES_FILE[split], split, verify_checksums, fix)
        labels = read_idx(spec, labels_path, LABELS_FILE[split], split, verify_checksums, fix)
        if len(images) != len(labels):
            raise DataError(
                f"{spec.title} file {images_path} holds {len(images)} images but {labels_path} "
                f"holds {len(labels)} labels. {fix}"
            )
        arrays[split] = normalize_hwc(images[..., None], [spec.mean], [spec.std]), labels.astype(np.int32)
    return Dataset(*arrays["train"], *arrays["t10k"], name=spec.name, image_shape=(IMAGE_SIDE, IMAGE_SIDE, 1))


def read_idx(spec: IdxDataset, path: Path, name: str, split: Split, verify_checksums: bool, fix: str) -> np.ndarray:
    """Parses one IDX file (``name`` is its canonical name) into a uint8 array."""

    def fail(problem: str) -> DataError:
        return DataError(f"{spec.title} file {path} {problem}. {fix}")

    try:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise fail(f"cannot be read or decompressed ({type(e).__name__}: {e})") from e

    is_images = "images" in name
    magic, dims = (IMAGES_MAGIC, 3) if is_images else (LABELS_MAGIC, 1)
    header_size = 4 * (1 + dims)
    if len(data) < header_size:
        raise fail(f"is too short for an IDX header ({len(data)} bytes)")
    header = struct.unpack(f">{1 + dims}I", data[:header_size])
    if header[0] != magic:
        raise fail(f"has magic number {header[0]}, expected {magic} for {name}")
    n, shape = header[1], header[1:]
    if is_images and shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise fail(f"holds {shape[1]}x{shape[2]} images, expected 28x28")
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise fail(f"has {len(data)} bytes but its header ({n} items) implies {expected}")
    if verify_checksums and n == CANONICAL_COUNT[split]:
        digest = hashlib.md5(data).hexdigest()
        if digest != spec.md5[name]:
            raise fail(
                f"has MD5 {digest} (uncompressed) but the official {name} has {spec.md5[name]}; "
                f"it is corrupt or not {spec.title} (data.verify_checksums=false skips this check)"
            )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
    if not is_images and n and array.max() >= NUM_CLASSES:
        raise fail(f"holds label {array.max()}, expected 0..{NUM_CLASSES - 1}")
    return array


def write_idx(
    directory: str | os.PathLike[str],
    split: str,
    images_uint8: np.ndarray,
    labels_uint8: np.ndarray,
    compress: bool = True,
) -> tuple[Path, Path]:
    """Writes ``images (N,28,28)`` and ``labels (N,)`` (uint8) as canonical IDX files.

    Returns the (images, labels) paths; names get ``.gz`` when ``compress``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels = np.asarray(images_uint8), np.asarray(labels_uint8)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"need uint8 arrays, got {images.dtype} and {labels.dtype}")
    n = len(images)
    if images.shape != (n, IMAGE_SIDE, IMAGE_SIDE) or labels.shape != (n,):
        raise ValueError(f"need images (N,28,28) and labels (N,), got {images.shape} and {labels.shape}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, header, body in (
        (IMAGES_FILE[split], struct.pack(">4I", IMAGES_MAGIC, n, IMAGE_SIDE, IMAGE_SIDE), images),
        (LABELS_FILE[split], struct.pack(">2I", LABELS_MAGIC, n), labels),
    ):
        data = header + np.ascontiguousarray(body).tobytes()
        path = directory / (f"{name}.gz" if compress else name)
        path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
        out.append(path)
    return out[0], out[1]
