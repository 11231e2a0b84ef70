"""MNIST loading.

Images come back flattened to ``(N, 784)`` float32 and normalised as

    x_norm = (x / 255 - MNIST_MEAN) / MNIST_STD,   MNIST_MEAN = 0.1307, MNIST_STD = 0.3081

computed in float32; labels are ``(N,)`` int32. Two sources, in this order:

1. A directory holding the four canonical IDX files (``data_dir`` argument, else the
   ``MNIST_DIR`` environment variable). Each file may be gzipped (``<name>.gz``,
   preferred) or not (``<name>``). Headers, sizes and counts are always checked.
   With ``verify_checksums=True`` a file holding the canonical number of examples
   (60000 train / 10000 test) must also match the MD5 of the official uncompressed
   file; files with any other count (small synthetic test sets) are accepted
   without a checksum.
2. When neither is set: TensorFlow Datasets downloads the same four files (from the
   mirror and with the SHA-256 checksums its own ``mnist`` builder registers) into
   its download cache; they are then read exactly as in 1. This needs only
   ``tensorflow-datasets``, not TensorFlow (``pip install 'second-order[tfds]'``).
   Files already in the cache are used without touching the network; otherwise the
   mirror's host is probed first (a few seconds at most), so that an offline run
   fails at once instead of after minutes of download retries.

Every failure raises :class:`DataError` with one message naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import os
import socket
import struct
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["DataError", "Mnist", "load_mnist", "normalize", "write_idx"]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
ENV_VAR = "MNIST_DIR"
IMAGE_SIDE = 28
NUM_CLASSES = 10
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

Split = Literal["train", "t10k"]
SPLITS: tuple[Split, ...] = ("train", "t10k")
IMAGES_FILE = {"train": "train-images-idx3-ubyte", "t10k": "t10k-images-idx3-ubyte"}
LABELS_FILE = {"train": "train-labels-idx1-ubyte", "t10k": "t10k-labels-idx1-ubyte"}
CANONICAL_COUNT = {"train": 60000, "t10k": 10000}
MD5 = {  # of the uncompressed canonical files
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# The mirror TFDS's own `mnist` builder downloads from (its URL checksums are registered).
TFDS_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"

_ALL_FILES = ", ".join(f"{IMAGES_FILE[s]}.gz, {LABELS_FILE[s]}.gz" for s in SPLITS)
_DIR_FIX = (
    f"Put the four IDX files ({_ALL_FILES}; gzipped or not) in that directory "
    "(from http://yann.lecun.com/exdb/mnist/ or any mirror), set data.dir=<dir> / MNIST_DIR "
    "to a directory that has them, or leave both unset to download through "
    "TensorFlow Datasets."
)
# How long the reachability probe of the mirror may take, and how many times TFDS's
# HTTP session may retry one file (its default, 10 with back-off, takes minutes).
_PROBE_TIMEOUT_S = 3.0
_TFDS_MAX_RETRIES = 3
_TFDS_FIX = (
    "Delete it so that TensorFlow Datasets downloads it again, or set data.dir=<dir> / "
    "MNIST_DIR to a directory holding the four IDX files."
)

# float32 value of every possible pixel byte; indexing it equals computing the formula.
_LUT = np.arange(256, dtype=np.float32) / np.float32(255)
_LUT = (_LUT - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)


class DataError(Exception):
    """MNIST could not be loaded; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Mnist:
    """Normalised MNIST: images ``(N, 784)`` float32, labels ``(N,)`` int32."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def __repr__(self) -> str:
        return f"Mnist(train={self.train_images.shape}, test={self.test_images.shape})"


def normalize(images_uint8: np.ndarray) -> np.ndarray:
    """``(x / 255 - MNIST_MEAN) / MNIST_STD`` in float32, flattened to ``(N, 784)``."""
    images = np.asarray(images_uint8, dtype=np.uint8)
    return np.take(_LUT, images.reshape(len(images), IMAGE_SIDE * IMAGE_SIDE))


def load_mnist(data_dir: str | os.PathLike[str] | None = None, *, verify_checksums: bool = True) -> Mnist:
    """Loads MNIST from ``data_dir``, else ``$MNIST_DIR``, else TensorFlow Datasets.

    ``None`` and ``""`` both mean unset. ``verify_checksums=False`` skips only the MD5
    comparison; headers, sizes and counts are always checked.
    """
    origin = "given"
    if data_dir is None or data_dir == "":
        data_dir, origin = os.environ.get(ENV_VAR) or None, f"from ${ENV_VAR}"
    if data_dir is None:
        return _load_tfds(verify_checksums=verify_checksums)
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise DataError(f"MNIST directory {directory} ({origin}) {what}. {_DIR_FIX}")
    paths = {}
    for split in SPLITS:
        for name in (IMAGES_FILE[split], LABELS_FILE[split]):
            gz, raw = directory / f"{name}.gz", directory / name
            if gz.is_file():
                paths[name] = gz
            elif raw.is_file():
                paths[name] = raw
            else:
                raise DataError(f"MNIST file {gz} is missing (nor is there an uncompressed {raw.name}). " + _DIR_FIX)
    return _load_files(paths, verify_checksums, _DIR_FIX)


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


def _load_files(paths: dict[str, Path], verify_checksums: bool, fix: str) -> Mnist:
    """Reads and checks the four files ``{canonical name: path}``."""
    arrays = {}
    for split in SPLITS:
        images_path, labels_path = paths[IMAGES_FILE[split]], paths[LABELS_FILE[split]]
        images = _read_idx(images_path, IMAGES_FILE[split], split, verify_checksums, fix)
        labels = _read_idx(labels_path, LABELS_FILE[split], split, verify_checksums, fix)
        if len(images) != len(labels):
            raise DataError(
                f"MNIST file {images_path} holds {len(images)} images but {labels_path} "
                f"holds {len(labels)} labels. {fix}"
            )
        arrays[split] = normalize(images), labels.astype(np.int32)
    return Mnist(*arrays["train"], *arrays["t10k"])


def _read_idx(path: Path, name: str, split: Split, verify_checksums: bool, fix: str) -> np.ndarray:
    """Parses one IDX file (``name`` is its canonical name) into a uint8 array."""

    def fail(problem: str) -> DataError:
        return DataError(f"MNIST file {path} {problem}. {fix}")

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
        if digest != MD5[name]:
            raise fail(
                f"has MD5 {digest} (uncompressed) but the official {name} has {MD5[name]}; "
                "it is corrupt or not MNIST (data.verify_checksums=false skips this check)"
            )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
    if not is_images and n and array.max() >= NUM_CLASSES:
        raise fail(f"holds label {array.max()}, expected 0..{NUM_CLASSES - 1}")
    return array


def _load_tfds(*, verify_checksums: bool = True, download_dir: str | os.PathLike[str] | None = None) -> Mnist:
    """Downloads the four IDX files with TensorFlow Datasets and reads them.

    Uses ``tfds.download.DownloadManager`` (no TensorFlow needed) with the URL and
    SHA-256 checksums TFDS registers for its ``mnist`` builder; files are cached in
    ``download_dir`` (default ``<TFDS data dir>/downloads``, i.e. ``$TFDS_DATA_DIR``
    or ``~/tensorflow_datasets``). Files already there are used without any network
    access; otherwise the mirror's host must answer a TCP connection within
    ``_PROBE_TIMEOUT_S`` seconds, else :class:`DataError` is raised at once, and TFDS
    retries each file at most ``_TFDS_MAX_RETRIES`` times.
    """
    try:
        import tensorflow_datasets as tfds
        from tensorflow_datasets.core.download import checksums as tfds_checksums
    except ImportError as e:
        raise DataError(
            "No MNIST directory was given (data.dir and MNIST_DIR are unset) and "
            f"tensorflow-datasets cannot be imported ({e}). Run "
            "pip install 'second-order[tfds]' to download MNIST through TensorFlow "
            "Datasets, or set data.dir=<dir> / MNIST_DIR to a directory holding the four "
            f"IDX files ({_ALL_FILES})."
        ) from e
    if download_dir is None:
        download_dir = Path(tfds.core.constants.DATA_DIR) / "downloads"
    urls = {name: f"{TFDS_MNIST_URL}{name}.gz" for name in MD5}
    registered = tfds_checksums.get_all_url_infos()
    manager = tfds.download.DownloadManager(
        download_dir=download_dir,
        url_infos={url: registered[url] for url in urls.values() if url in registered},
    )
    if not _tfds_cached(manager, urls.values()):
        problem = _unreachable(TFDS_MNIST_URL)
        if problem is not None:
            raise DataError(
                f"Cannot download MNIST from {TFDS_MNIST_URL}: {problem}, and the files are "
                f"not in the TensorFlow Datasets download cache {download_dir}. Set "
                "data.dir=<dir> / MNIST_DIR to a directory holding the four IDX files "
                f"({_ALL_FILES}), or connect to the internet."
            )
    try:
        with _bounded_tfds_retries():
            downloaded = manager.download(urls)
    except Exception as e:  # network, HTTP, checksum or disk errors, all alike to the user
        raise DataError(
            f"Downloading MNIST from {TFDS_MNIST_URL} with TensorFlow Datasets into "
            f"{download_dir} failed ({type(e).__name__}: {e}). Check the internet "
            "connection, or set data.dir=<dir> / MNIST_DIR to a directory holding the "
            f"four IDX files ({_ALL_FILES})."
        ) from e
    paths = {name: Path(os.fspath(downloaded[name])) for name in urls}
    return _load_files(paths, verify_checksums, _TFDS_FIX)


def _tfds_cached(manager: Any, urls: Iterable[str]) -> bool:
    """Whether TFDS would serve every URL from its download cache (no network needed).

    Asks the manager the same questions its ``download`` does (checksum-named file,
    then URL-named file, each also in the legacy layout). These are private TFDS
    methods: if they are missing or fail, the answer is "no", which costs only the
    quick reachability probe.
    """
    try:
        from tensorflow_datasets.core.download import resource as tfds_resource

        for url in urls:
            resource = tfds_resource.Resource(url=url)
            if not any(
                lookup(resource, legacy_mode=legacy)
                for lookup in (manager._get_checksum_dl_result, manager._get_url_dl_result)
                for legacy in (False, True)
            ):
                return False
        return True
    except Exception:
        return False


def _unreachable(url: str, timeout: float = _PROBE_TIMEOUT_S) -> str | None:
    """Opens (and closes) a TCP connection to the URL's host, or to the proxy that would
    carry the request; returns why that failed, or ``None`` when it worked.

    URLs that are not http(s) (local files, ``gs://``, ...) are not probed.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_parts.hostname:
            default = 443 if proxy_parts.scheme == "https" else 80
            host, port = proxy_parts.hostname, proxy_parts.port or default
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port} is unreachable ({type(e).__name__}: {e})"
    return None


@contextlib.contextmanager
def _bounded_tfds_retries() -> Iterator[None]:
    """Lowers TFDS's per-file HTTP retry count while downloading (restored after)."""
    try:
        from tensorflow_datasets.core.download import downloader
    except ImportError:
        yield
        return
    saved = getattr(downloader, "MAX_RETRIES", None)
    if not isinstance(saved, int):
        yield
        return
    downloader.MAX_RETRIES = min(saved, _TFDS_MAX_RETRIES)
    try:
        yield
    finally:
        downloader.MAX_RETRIES = saved
