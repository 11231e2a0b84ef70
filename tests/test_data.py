"""Tests for second_order.suite.data: IDX round trip, every failure mode, real MNIST, TFDS glue."""

from __future__ import annotations

import functools
import gzip
import http.server
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from second_order.suite import data
from second_order.suite.data import DataError, load_mnist, tfds_download, write_idx
from second_order.suite.data import mnist as mnist_data


def _small(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, :2] = (0, 255)  # make sure both extremes occur
    return images, rng.integers(0, 10, size=n, dtype=np.uint8)


@pytest.fixture
def small_dir(tmp_path: Path) -> tuple[Path, dict]:
    """A directory with a 7-image train split and a 3-image test split (gzipped)."""
    arrays = {"train": _small(0, 7), "t10k": _small(1, 3)}
    for split, (images, labels) in arrays.items():
        write_idx(tmp_path, split, images, labels)
    return tmp_path, arrays


def _expected(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), 784).astype(np.float32)
    return (x / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081)


def _check_small(mnist: data.Mnist, arrays: dict) -> None:
    for split, imgs, lbls in (
        ("train", mnist.train_images, mnist.train_labels),
        ("t10k", mnist.test_images, mnist.test_labels),
    ):
        images, labels = arrays[split]
        assert imgs.dtype == np.float32 and imgs.shape == (len(images), 784)
        assert lbls.dtype == np.int32 and lbls.shape == (len(images),)
        np.testing.assert_array_equal(imgs, _expected(images))
        np.testing.assert_array_equal(lbls, labels)


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path: Path, compress: bool) -> None:
    arrays = {"train": _small(0, 7), "t10k": _small(1, 3)}
    for split, (images, labels) in arrays.items():
        paths = write_idx(tmp_path, split, images, labels, compress=compress)
        assert all(p.name.endswith(".gz") == compress for p in paths)
    mnist = load_mnist(tmp_path)
    _check_small(mnist, arrays)
    np.testing.assert_allclose(mnist.train_images[0, :2], [-0.4242129, 2.8214867], rtol=1e-6)
    assert "train=(7, 784)" in repr(mnist)


def test_gz_preferred_over_uncompressed(small_dir) -> None:
    directory, arrays = small_dir
    (directory / "train-labels-idx1-ubyte").write_bytes(b"junk")  # ignored: .gz exists
    _check_small(load_mnist(directory), arrays)


def test_write_idx_rejects_bad_input(tmp_path: Path) -> None:
    images, labels = _small(0, 2)
    with pytest.raises(ValueError):
        write_idx(tmp_path, "test", images, labels)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        write_idx(tmp_path, "train", images.astype(np.int32), labels)
    with pytest.raises(ValueError):
        write_idx(tmp_path, "train", images[:, :27], labels)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_mnist(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value) and "MNIST_DIR" in str(info.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is not a directory"):
        load_mnist(tmp_path / "file")


def test_missing_file(small_dir) -> None:
    directory, _ = small_dir
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="is missing") as info:
        load_mnist(directory)
    assert str(directory / "t10k-labels-idx1-ubyte.gz") in str(info.value)
    assert "TensorFlow Datasets" in str(info.value)


def _gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


def _rewrite(path: Path, change) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(_gz(change(bytearray(raw))))


def _set(raw: bytearray, offset: int, value: int) -> bytearray:
    raw[offset : offset + 4] = value.to_bytes(4, "big")
    return raw


CORRUPTIONS = {
    "truncated gzip": (lambda p: p.write_bytes(p.read_bytes()[:-20]), "decompressed"),
    "not gzip": (lambda p: p.write_bytes(b"definitely not gzip data"), "decompressed"),
    "bad deflate stream": (
        lambda p: p.write_bytes(p.read_bytes()[:10] + b"\xff" * 40 + p.read_bytes()[50:]),
        "decompressed",
    ),
    "bad crc": (
        lambda p: p.write_bytes(p.read_bytes()[:-8] + b"\0\0\0\0" + p.read_bytes()[-4:]),
        "decompressed",
    ),
    "empty": (lambda p: p.write_bytes(_gz(b"")), "too short"),
    "wrong magic": (lambda p: _rewrite(p, lambda r: _set(r, 0, 2049)), "magic number 2049"),
    "wrong image size": (lambda p: _rewrite(p, lambda r: _set(r, 8, 27)), "27x28"),
    "header claims more": (lambda p: _rewrite(p, lambda r: _set(r, 4, 8)), "header"),
    "extra bytes": (lambda p: _rewrite(p, lambda r: r + b"\0"), "header"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupt_images_file(small_dir, case: str) -> None:
    directory, _ = small_dir
    path = directory / "train-images-idx3-ubyte.gz"
    corrupt, expected = CORRUPTIONS[case]
    corrupt(path)
    with pytest.raises(DataError, match=expected) as info:
        load_mnist(directory)
    message = str(info.value)
    assert str(path) in message and "MNIST_DIR" in message and "\n" not in message


def test_corrupt_uncompressed_labels(tmp_path: Path) -> None:
    for split, seed, n in (("train", 0, 4), ("t10k", 1, 2)):
        write_idx(tmp_path, split, *_small(seed, n), compress=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0:4] = (2051).to_bytes(4, "big")
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic number 2051") as info:
        load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_label_out_of_range(small_dir) -> None:
    directory, _ = small_dir
    path = directory / "train-labels-idx1-ubyte.gz"
    _rewrite(path, lambda r: r[:-1] + b"\x0a")
    with pytest.raises(DataError, match="label 10") as info:
        load_mnist(directory)
    assert str(path) in str(info.value)


def test_count_mismatch(small_dir) -> None:
    directory, _ = small_dir
    five_labels = write_idx(directory / "other", "train", *_small(2, 5))[1]
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(five_labels.read_bytes())
    with pytest.raises(DataError, match="7 images but") as info:
        load_mnist(directory)
    assert str(directory / "train-labels-idx1-ubyte.gz") in str(info.value)


def test_checksum_of_canonical_count(tmp_path: Path) -> None:
    """A 10000-image test split must match the official MD5 unless told not to check."""
    write_idx(tmp_path, "train", *_small(0, 3))
    images = np.zeros((10000, 28, 28), np.uint8)
    write_idx(tmp_path, "t10k", images, np.zeros(10000, np.uint8))
    with pytest.raises(DataError, match="MD5") as info:
        load_mnist(tmp_path)
    assert str(tmp_path / "t10k-images-idx3-ubyte.gz") in str(info.value)
    mnist = load_mnist(tmp_path, verify_checksums=False)
    assert mnist.test_images.shape == (10000, 784)


def test_env_var_is_honoured(small_dir, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    directory, arrays = small_dir
    monkeypatch.setenv("MNIST_DIR", str(directory))
    _check_small(load_mnist(), arrays)
    _check_small(load_mnist(""), arrays)  # "" means unset, as None does
    # An explicit argument wins over the environment variable.
    other = tmp_path_factory.mktemp("other")
    with pytest.raises(DataError, match=str(other)):
        load_mnist(other)
    monkeypatch.setenv("MNIST_DIR", str(other / "gone"))
    with pytest.raises(DataError, match=r"gone \(from \$MNIST_DIR\) does not exist"):
        load_mnist()


def test_no_dir_and_no_tfds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(DataError, match=r"pip install 'tensorflow-datasets>=4.9'") as info:
        load_mnist()
    assert "MNIST_DIR" in str(info.value)


def test_no_dir_uses_tfds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNIST_DIR", raising=False)
    calls = []

    def fake_tfds(**kw):
        calls.append(kw)
        return "tfds"

    monkeypatch.setattr(mnist_data, "_load_tfds", fake_tfds)
    assert load_mnist(verify_checksums=False) == "tfds"
    assert calls == [{"verify_checksums": False}]


def test_real_mnist(real_mnist_dir: Path) -> None:
    """The real files (MNIST_DIR, else ../shared/data/mnist; skipped when absent)."""
    mnist = load_mnist(real_mnist_dir)
    assert mnist.train_images.shape == (60000, 784) and mnist.test_images.shape == (10000, 784)
    assert mnist.train_labels.shape == (60000,) and mnist.test_labels.shape == (10000,)
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = np.bincount(mnist.train_labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(float(mnist.train_images.mean())) < 1e-3
    assert abs(float(mnist.train_images.std()) - 1.0) < 1e-3


# --- TensorFlow Datasets glue, offline: a loopback HTTP server plays the mirror. ---


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        super().do_GET()
        self.server.answered.append(self.path)  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serves a directory over http://127.0.0.1 and points TFDS_MNIST_URL at it."""
    pytest.importorskip("tensorflow_datasets")
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    server.answered = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setattr(mnist_data, "TFDS_MNIST_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    yield served
    # TFDS raises on the first failed download while the others may still be under
    # way; a refused connection would be retried with back-off for minutes, so keep
    # serving until all four files have been asked for.
    deadline = time.monotonic() + 10
    while len(server.answered) < 4 and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.01)
    server.shutdown()
    server.server_close()
    thread.join()


def test_tfds_download(mirror: Path, tmp_path: Path) -> None:
    arrays = {"train": _small(0, 7), "t10k": _small(1, 3)}
    for split, (images, labels) in arrays.items():
        write_idx(mirror, split, images, labels)
    cache = tmp_path / "downloads"
    _check_small(mnist_data._load_tfds(download_dir=cache), arrays)
    for f in mirror.iterdir():
        f.unlink()  # a second call reads the TFDS download cache only
    _check_small(mnist_data._load_tfds(download_dir=cache), arrays)


def test_tfds_download_fails(mirror: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Downloading MNIST .* failed") as info:
        mnist_data._load_tfds(download_dir=tmp_path / "downloads")
    assert "MNIST_DIR" in str(info.value)


def test_tfds_corrupt_download(mirror: Path, tmp_path: Path) -> None:
    write_idx(mirror, "train", *_small(0, 7))
    write_idx(mirror, "t10k", *_small(1, 3))
    (mirror / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="Delete it") as info:
        mnist_data._load_tfds(download_dir=tmp_path / "downloads")
    assert str(tmp_path / "downloads") in str(info.value)


# --- Offline: fail fast (no network is ever contacted; the probe is patched). ---


def _no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Makes every TCP probe fail at once; returns the (host, port) pairs probed."""
    probed: list[tuple[str, int]] = []

    def refuse(address, timeout=None, *args, **kwargs):
        probed.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return probed


def _clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_tfds_offline_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    _clear_proxies(monkeypatch)
    probed = _no_network(monkeypatch)

    def never(*args, **kwargs):
        pytest.fail("the TFDS download manager must not be called when the mirror is unreachable")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", never)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        mnist_data._load_tfds(download_dir=tmp_path / "downloads")
    assert time.monotonic() - start < 2.0
    message = str(info.value)
    assert mnist_data.TFDS_MNIST_URL in message
    assert "data.dir=<dir> / MNIST_DIR" in message
    assert "connect to the internet" in message
    assert "train-images-idx3-ubyte.gz" in message
    assert probed == [("storage.googleapis.com", 443)]


def test_tfds_cache_used_offline(mirror: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    arrays = {"train": _small(0, 7), "t10k": _small(1, 3)}
    for split, (images, labels) in arrays.items():
        write_idx(mirror, split, images, labels)
    cache = tmp_path / "downloads"
    _check_small(mnist_data._load_tfds(download_dir=cache), arrays)  # the probe reaches the loopback mirror
    for f in mirror.iterdir():
        f.unlink()
    probed = _no_network(monkeypatch)
    _check_small(mnist_data._load_tfds(download_dir=cache), arrays)
    assert probed == []  # everything cached: no reachability check at all


def test_tfds_retries_bounded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core.download import downloader

    _clear_proxies(monkeypatch)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())  # "reachable"
    default = downloader.MAX_RETRIES
    seen = []

    def fake_download(self, urls):
        seen.append(downloader.MAX_RETRIES)
        raise OSError("stop here")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    with pytest.raises(DataError, match="Downloading MNIST .* failed"):
        mnist_data._load_tfds(download_dir=tmp_path / "downloads")
    assert seen and seen[0] <= 3
    assert downloader.MAX_RETRIES == default


def test_probe_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_proxies(monkeypatch)
    probed = _no_network(monkeypatch)
    assert tfds_download._unreachable("file:///tmp/mnist/") is None  # local: never probed
    assert "example.invalid:8080 is unreachable" in (tfds_download._unreachable("http://example.invalid:8080/x") or "")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    assert "proxy.invalid:3128" in (tfds_download._unreachable("https://storage.googleapis.com/x") or "")
    assert probed == [("example.invalid", 8080), ("proxy.invalid", 3128)]
