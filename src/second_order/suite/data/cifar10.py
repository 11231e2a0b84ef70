"""CIFAR-10 (Krizhevsky 2009; https://www.cs.toronto.edu/~kriz/cifar.html), binary version.

60000 colour images 32x32x3 in 10 classes: five training files
``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin`` (in
``cifar-10-batches-bin/`` of ``cifar-10-binary.tar.gz``). Each file is 10000 records
of 3073 bytes (30,730,000 bytes), nothing between them: 1 label byte (0..9), then
3072 pixel bytes, the 1024 red values, then the 1024 green, then the 1024 blue, each
channel row-major (the first 32 bytes are the red values of the first row).

Images come back as ``(N, 3072)`` float32 in HWC order (pixel ``(y, x)``, channel
``c`` at ``(32*y + x)*3 + c``; reshape to ``(N, 32, 32, 3)``), normalised per channel
as ``(x / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]``; labels ``(N,)`` int32.

Sources, in this order: ``data_dir``, else ``$CIFAR10_DIR`` (a directory holding the
six files, or its parent holding ``cifar-10-batches-bin/``); else TensorFlow
Datasets' download manager fetches the archive from the Toronto page (for users with
internet; TFDS verifies the SHA-256 its ``cifar10`` builder registers, and here the
MD5 the page publishes), and the six files are unpacked beside it (``extracted/``).

Checks: every file must be a whole number of records, at most the official 10000,
with labels 0..9. No per-file checksums are published, so with ``verify_checksums``
a directory with the official counts must have the published class balance instead:
exactly 5000 images of each class in the training files and 1000 in the test file.
Files with fewer records (small test sets) are accepted without that check.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np

from . import tfds_download
from .base import NUM_CLASSES, DataError, Dataset, check_directory, normalize_hwc, resolve_directory

IMAGE_SHAPE = (32, 32, 3)  # (H, W, C)
PIXELS = 32 * 32 * 3
RECORD_BYTES = 1 + PIXELS
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
SUBDIR = "cifar-10-batches-bin"
CANONICAL_RECORDS = 10000  # per file
CANONICAL_FILE_BYTES = CANONICAL_RECORDS * RECORD_BYTES  # 30,730,000
PER_CLASS = {"train": 5000, "test": 1000}  # published on the page above

# Per-channel (R, G, B) mean and population standard deviation of the 50000 training
# images' pixel bytes (numpy's `train[..., c].mean()` / `.std()` over 50000*32*32 values;
# the means are exact: channel sums 6415714204, 6295060180, 5829907619 / 51,200,000).
# These are the values widely reproduced in public code (e.g. tinygrad's CIFAR example);
# divided by 255: mean (0.49140, 0.48216, 0.44653), std (0.24703, 0.24349, 0.26159).
# (The also-quoted std (0.2023, 0.1994, 0.2010) is a mean of per-image stds, not this.)
_MEAN_BYTES = (125.306918046875, 122.950394140625, 113.86538318359375)
_STD_BYTES = (62.993219278136884, 62.08870764001421, 66.70489964063091)
CIFAR10_MEAN = tuple(m / 255 for m in _MEAN_BYTES)
CIFAR10_STD = tuple(s / 255 for s in _STD_BYTES)

ENV_VAR = "CIFAR10_DIR"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"  # also TFDS's `cifar10` builder's
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on the CIFAR page
ARCHIVE_BYTES = 170_052_171  # TFDS's url_checksums/cifar10.txt (SHA-256 c4a38c50...)

_ALL_FILES = ", ".join((*TRAIN_FILES, TEST_FILE))
HINTS = tfds_download.Hints(
    title="CIFAR-10",
    env_var=ENV_VAR,
    files=f"the six binary files ({_ALL_FILES})",
    unset=f"data.dir and {ENV_VAR} are unset",
)
_DIR_FIX = (
    f"Put the six binary files ({_ALL_FILES}) of {CIFAR10_URL} in that directory, "
    f"set data.dir=<dir> / {ENV_VAR} to a directory that has them, or leave both unset to "
    "download through TensorFlow Datasets."
)


def load_cifar10(data_dir: str | os.PathLike[str] | None = None, *, verify_checksums: bool = True) -> Dataset:
    """Loads CIFAR-10 from ``data_dir``, else ``$CIFAR10_DIR``, else TensorFlow Datasets.

    ``None`` and ``""`` both mean unset. ``verify_checksums=False`` skips only the
    class-balance check (and the archive's MD5); sizes and labels are always checked.
    """
    directory, origin = resolve_directory(data_dir, ENV_VAR)
    if directory is None:
        return _load_tfds(verify_checksums=verify_checksums)
    check_directory(directory, origin, "CIFAR-10", _DIR_FIX)
    return load_directory(directory, verify_checksums, _DIR_FIX)


def load_directory(directory: Path, verify_checksums: bool, fix: str) -> Dataset:
    """Reads the six files from ``directory``, or from its ``cifar-10-batches-bin/``."""
    if not (directory / TRAIN_FILES[0]).exists() and (directory / SUBDIR).is_dir():
        directory = directory / SUBDIR
    arrays = {}
    for split, names in (("train", TRAIN_FILES), ("test", (TEST_FILE,))):
        parts = [read_batch(directory / name, fix) for name in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
        if verify_checksums and all(len(p[1]) == CANONICAL_RECORDS for p in parts):
            counts = np.bincount(labels, minlength=NUM_CLASSES)
            if not np.all(counts == PER_CLASS[split]):
                where = directory / names[0] if len(names) == 1 else f"{directory} ({', '.join(names)})"
                raise DataError(
                    f"CIFAR-10 {split} file(s) {where} hold {counts.tolist()} images per class, but the "
                    f"official {split} set has exactly {PER_CLASS[split]} of each; they are corrupt or not "
                    f"CIFAR-10 (data.verify_checksums=false skips this check). {fix}"
                )
        arrays[split] = normalize_hwc(images, CIFAR10_MEAN, CIFAR10_STD), labels
    return Dataset(*arrays["train"], *arrays["test"], name="cifar10", image_shape=IMAGE_SHAPE)


def read_batch(path: Path, fix: str = _DIR_FIX) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file: images ``(n, 32, 32, 3)`` uint8 (HWC) and labels ``(n,)`` uint8."""

    def fail(problem: str) -> DataError:
        return DataError(f"CIFAR-10 file {path} {problem}. {fix}")

    if not path.is_file():
        raise fail("is missing" if not path.exists() else "is not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise fail(f"cannot be read ({type(e).__name__}: {e})") from e
    if not data or len(data) % RECORD_BYTES:
        raise fail(
            f"has {len(data)} bytes, not a whole number of {RECORD_BYTES}-byte records "
            f"(1 label + {PIXELS} pixels; the official file has {CANONICAL_FILE_BYTES:,} bytes)"
        )
    n = len(data) // RECORD_BYTES
    if n > CANONICAL_RECORDS:
        raise fail(f"holds {n} records ({len(data)} bytes), more than the official {CANONICAL_RECORDS}")
    records = np.frombuffer(data, dtype=np.uint8).reshape(n, RECORD_BYTES)
    labels = records[:, 0]
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise fail(f"holds label {labels[bad]} in record {bad}, expected 0..{NUM_CLASSES - 1}")
    images = records[:, 1:].reshape(n, IMAGE_SHAPE[2], IMAGE_SHAPE[0], IMAGE_SHAPE[1]).transpose(0, 2, 3, 1)
    return images, labels


def write_cifar10_batch(path: str | os.PathLike[str], images_uint8: np.ndarray, labels_uint8: np.ndarray) -> Path:
    """Writes ``images (N, 32, 32, 3)`` (HWC) and ``labels (N,)`` (uint8) as one binary batch file."""
    images, labels = np.asarray(images_uint8), np.asarray(labels_uint8)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"need uint8 arrays, got {images.dtype} and {labels.dtype}")
    n = len(images)
    if images.shape != (n, *IMAGE_SHAPE) or labels.shape != (n,):
        raise ValueError(f"need images (N,32,32,3) and labels (N,), got {images.shape} and {labels.shape}")
    records = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(n, PIXELS)], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.ascontiguousarray(records).tobytes())
    return path


def _load_tfds(*, verify_checksums: bool = True, download_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Downloads ``CIFAR10_URL`` with TensorFlow Datasets, checks its MD5, extracts it and reads it."""
    archive = tfds_download.download({"archive": CIFAR10_URL}, HINTS, CIFAR10_URL, download_dir)["archive"]
    if verify_checksums and archive.stat().st_size == ARCHIVE_BYTES:
        digest = hashlib.md5()
        with archive.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != ARCHIVE_MD5:
            raise DataError(
                f"CIFAR-10 archive {archive} has MD5 {digest.hexdigest()} but the official one has "
                f"{ARCHIVE_MD5}. {HINTS.corrupt_fix}"
            )
    directory = _extract(archive, archive.parent / "extracted" / archive.name)
    return load_directory(directory, verify_checksums, HINTS.corrupt_fix)


def _extract(archive: Path, destination: Path) -> Path:
    """Unpacks the six batch files of ``archive`` into ``destination`` (once; reused after).

    Only those regular members are read (no other path of the archive is written),
    into a temporary directory renamed into place when complete.
    """
    if destination.is_dir():
        return destination
    wanted = {f"{SUBDIR}/{name}": name for name in (*TRAIN_FILES, TEST_FILE)}
    partial = destination.with_name(f"{destination.name}.partial-{os.getpid()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or not member.isfile():
                    continue
                source = tar.extractfile(member)
                if source is not None:
                    with source, (partial / name).open("wb") as target:
                        shutil.copyfileobj(source, target, 1 << 20)
        missing = [path for path, name in wanted.items() if not (partial / name).is_file()]
        if missing:
            raise tarfile.TarError(f"no member {missing[0]}")
        os.replace(partial, destination)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        shutil.rmtree(partial, ignore_errors=True)
        if destination.is_dir():  # another process extracted it meanwhile
            return destination
        raise DataError(
            f"CIFAR-10 archive {archive} cannot be extracted ({type(e).__name__}: {e}). {HINTS.corrupt_fix}"
        ) from e
    return destination
