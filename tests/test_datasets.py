"""Fashion-MNIST and CIFAR-10 beside MNIST: readers, checks, dispatch by name, config, one training run."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config

from second_order.suite import config as config_module
from second_order.suite.config import ConfigError, validate
from second_order.suite.data import (
    DATASETS,
    DataError,
    Dataset,
    Mnist,
    cifar10,
    fashion_mnist,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    write_cifar10_batch,
    write_idx,
)

# --------------------------------------------------------------------------- helpers


def _idx_dir(directory: Path, seed: int = 0, n_train: int = 7, n_test: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(directory, split, images, labels)
        arrays[split] = images, labels
    return arrays


def _cifar_arrays(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    images[0, 0, 0] = (0, 128, 255)  # both extremes and a middle value, one per channel
    return images, rng.integers(0, 10, size=n, dtype=np.uint8)


def _cifar_dir(directory: Path, n_per_file: int = 3, n_test: int = 2) -> dict:
    """Five training files of ``n_per_file`` records and a test file of ``n_test``."""
    train = [_cifar_arrays(i, n_per_file) for i in range(5)]
    for i, (images, labels) in enumerate(train):
        write_cifar10_batch(directory / f"data_batch_{i + 1}.bin", images, labels)
    test = _cifar_arrays(9, n_test)
    write_cifar10_batch(directory / "test_batch.bin", *test)
    return {
        "train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
        "test": test,
    }


def _cifar_expected(images: np.ndarray) -> np.ndarray:
    mean = np.array(cifar10.CIFAR10_MEAN, np.float32)
    std = np.array(cifar10.CIFAR10_STD, np.float32)
    x = images.astype(np.float32) / np.float32(255)
    return ((x - mean) / std).reshape(len(images), 3072)


def _one_line(err: pytest.ExceptionInfo, *parts: object) -> str:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, (part, message)
    return message


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def real_fashion(real_fashion_mnist_dir: Path) -> Dataset:
    return load_fashion_mnist(real_fashion_mnist_dir)  # verify_checksums=True: the MD5s are checked


def test_real_fashion_mnist(real_fashion: Dataset) -> None:
    fm = real_fashion
    assert fm.name == "fashion_mnist" and fm.image_shape == (28, 28, 1) and fm.num_classes == 10
    assert fm.train_images.shape == (60000, 784) and fm.test_images.shape == (10000, 784)
    assert fm.train_images.dtype == np.float32 and fm.train_labels.dtype == np.int32
    assert fm.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert fm.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert np.bincount(fm.train_labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(fm.test_labels, minlength=10).tolist() == [1000] * 10
    assert abs(float(fm.train_images.mean())) < 1e-3  # the documented mean 0.2860, std 0.3530
    assert abs(float(fm.train_images.std()) - 1.0) < 1e-3


def test_real_fashion_mnist_checksums(real_fashion_mnist_dir: Path) -> None:
    """The MD5s in the loader are those of the decompressed real files (Debian's or upstream's)."""
    for name, md5 in fashion_mnist.MD5.items():
        raw = gzip.decompress((real_fashion_mnist_dir / f"{name}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5, name


def test_fashion_mnist_small_files(tmp_path: Path) -> None:
    arrays = _idx_dir(tmp_path)
    fm = load_fashion_mnist(tmp_path)
    images, labels = arrays["train"]
    expected = (images.reshape(7, 784).astype(np.float32) / np.float32(255) - np.float32(0.2860)) / np.float32(0.3530)
    np.testing.assert_array_equal(fm.train_images, expected)
    np.testing.assert_array_equal(fm.train_labels, labels)
    np.testing.assert_array_equal(fm.test_labels, arrays["t10k"][1])
    assert fm.name == "fashion_mnist" and "fashion_mnist" in repr(fm)


def test_fashion_mnist_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian, env = tmp_path / "debian", tmp_path / "env"
    _idx_dir(debian, seed=1, n_train=4)
    _idx_dir(env, seed=2, n_train=5)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", debian)
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    assert len(load_fashion_mnist().train_labels) == 4  # Debian's directory
    monkeypatch.setenv("FASHION_MNIST_DIR", str(env))
    assert len(load_fashion_mnist("").train_labels) == 5  # the environment variable wins
    assert len(load_fashion_mnist(tmp_path / "debian").train_labels) == 4  # the argument wins
    monkeypatch.delenv("FASHION_MNIST_DIR")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(fashion_mnist, "_load_tfds", lambda **kw: ("tfds", kw))
    assert load_fashion_mnist(verify_checksums=False) == ("tfds", {"verify_checksums": False})


def test_fashion_mnist_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _idx_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="is missing") as info:
        load_fashion_mnist(tmp_path)
    _one_line(info, "Fashion-MNIST file", tmp_path / "t10k-images-idx3-ubyte.gz", "FASHION_MNIST_DIR")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"gone \(from \$FASHION_MNIST_DIR\) does not exist"):
        load_fashion_mnist()


def test_fashion_mnist_checksum_of_canonical_count(tmp_path: Path) -> None:
    _idx_dir(tmp_path, n_test=3)
    write_idx(tmp_path, "t10k", np.zeros((10000, 28, 28), np.uint8), np.zeros(10000, np.uint8))
    with pytest.raises(DataError, match="MD5") as info:
        load_fashion_mnist(tmp_path)
    _one_line(info, tmp_path / "t10k-images-idx3-ubyte.gz", fashion_mnist.MD5["t10k-images-idx3-ubyte"])
    assert "not Fashion-MNIST" in str(info.value)
    assert load_fashion_mnist(tmp_path, verify_checksums=False).test_images.shape == (10000, 784)


def test_fashion_mnist_without_tfds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match=r"pip install 'tensorflow-datasets>=4.9'") as info:
        load_fashion_mnist()
    _one_line(info, "Fashion-MNIST", "FASHION_MNIST_DIR", tmp_path / "absent")


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_layout_by_hand(tmp_path: Path) -> None:
    """One record written byte by byte as the CIFAR page describes it, read back in HWC order."""
    r, g, b = (np.arange(1024, dtype=np.int64) * k % 256 for k in (1, 3, 7))
    record = bytes([7]) + bytes(r.astype(np.uint8)) + bytes(g.astype(np.uint8)) + bytes(b.astype(np.uint8))
    path = tmp_path / "one.bin"
    path.write_bytes(record)
    images, labels = cifar10.read_batch(path)
    assert labels.tolist() == [7] and images.shape == (1, 32, 32, 3)
    for y, x in ((0, 0), (0, 31), (1, 0), (17, 5), (31, 31)):
        i = 32 * y + x  # row-major within each channel's plane
        assert images[0, y, x].tolist() == [r[i], g[i], b[i]]
    written = write_cifar10_batch(tmp_path / "again.bin", images, labels)
    assert written.read_bytes() == record


def test_cifar_round_trip(tmp_path: Path) -> None:
    arrays = _cifar_dir(tmp_path)
    data = load_cifar10(tmp_path)
    assert data.name == "cifar10" and data.image_shape == (32, 32, 3)
    for split, imgs, lbls in (
        ("train", data.train_images, data.train_labels),
        ("test", data.test_images, data.test_labels),
    ):
        images, labels = arrays[split]
        assert imgs.dtype == np.float32 and imgs.shape == (len(images), 3072)
        assert lbls.dtype == np.int32
        np.testing.assert_array_equal(lbls, labels)
        np.testing.assert_array_equal(imgs, _cifar_expected(images))
    # pixel (0, 0) of the first image: channels 0, 128, 255 -> (x/255 - mean[c]) / std[c]
    np.testing.assert_allclose(data.train_images[0, :3], [-1.9892, 0.0813, 2.1158], atol=1e-4)
    np.testing.assert_array_equal(
        data.train_images.reshape(-1, 32, 32, 3)[0], _cifar_expected(arrays["train"][0][:1]).reshape(32, 32, 3)
    )


def test_cifar_parent_directory_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = _cifar_dir(tmp_path / "cifar-10-batches-bin")
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path))  # the archive's top level is accepted too
    data = load_cifar10()
    np.testing.assert_array_equal(data.test_labels, arrays["test"][1])


BAD_CIFAR = {
    "truncated record": (lambda p: p.write_bytes(p.read_bytes()[:-1]), "not a whole number of 3073-byte records"),
    "empty": (lambda p: p.write_bytes(b""), "has 0 bytes"),
    "wrong size": (lambda p: p.write_bytes(p.read_bytes() + b"\0" * 100), "30,730,000"),
    "missing": (lambda p: p.unlink(), "is missing"),
    "bad label": (lambda p: p.write_bytes(b"\x0a" + p.read_bytes()[1:]), "label 10 in record 0"),
}


@pytest.mark.parametrize("case", BAD_CIFAR)
def test_cifar_bad_file(tmp_path: Path, case: str) -> None:
    _cifar_dir(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    corrupt, expected = BAD_CIFAR[case]
    corrupt(path)
    with pytest.raises(DataError, match=expected) as info:
        load_cifar10(tmp_path)
    _one_line(info, f"CIFAR-10 file {path}", "CIFAR10_DIR")


def test_cifar_too_many_records(tmp_path: Path) -> None:
    _cifar_dir(tmp_path)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(bytes(3073 * 10001))
    with pytest.raises(DataError, match="holds 10001 records") as info:
        load_cifar10(tmp_path)
    _one_line(info, path)


def test_cifar_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_cifar10(tmp_path / "nope")
    _one_line(info, "CIFAR-10 directory", tmp_path / "nope", "cifar-10-binary.tar.gz")


def test_cifar_class_balance_of_canonical_files(tmp_path: Path) -> None:
    """No per-file checksum is published: an official-size test file must hold 1000 images per class."""
    _cifar_dir(tmp_path)
    images = np.zeros((10000, 32, 32, 3), np.uint8)
    balanced = np.repeat(np.arange(10, dtype=np.uint8), 1000)
    write_cifar10_batch(tmp_path / "test_batch.bin", images, balanced)
    assert (tmp_path / "test_batch.bin").stat().st_size == 30_730_000
    assert load_cifar10(tmp_path).test_labels.shape == (10000,)
    skewed = balanced.copy()
    skewed[0] = 9
    write_cifar10_batch(tmp_path / "test_batch.bin", images, skewed)
    with pytest.raises(DataError, match="exactly 1000 of each") as info:
        load_cifar10(tmp_path)
    _one_line(info, tmp_path / "test_batch.bin", "verify_checksums=false")
    assert load_cifar10(tmp_path, verify_checksums=False).test_labels[0] == 9


def test_cifar_without_tfds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(DataError, match=r"pip install 'tensorflow-datasets>=4.9'") as info:
        load_cifar10()
    _one_line(info, "CIFAR-10", "CIFAR10_DIR", "test_batch.bin")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def cifar_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serves a directory over http://127.0.0.1 and points CIFAR10_URL at its cifar-10-binary.tar.gz."""
    pytest.importorskip("tensorflow_datasets")
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-binary.tar.gz"
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    yield served / "cifar-10-binary.tar.gz"
    server.shutdown()
    server.server_close()
    thread.join()


def _archive(source: Path, target: Path) -> None:
    """``source`` (a directory) as ``cifar-10-batches-bin/`` of a .tar.gz, as on the CIFAR page."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-bin")
    target.write_bytes(buffer.getvalue())


def test_cifar_tfds_download_and_extract(cifar_mirror: Path, tmp_path: Path) -> None:
    """TFDS fetches the archive from a loopback mirror; a second call needs only the cache."""
    arrays = _cifar_dir(tmp_path / "src")
    _archive(tmp_path / "src", cifar_mirror)
    cache = tmp_path / "downloads"
    data = cifar10._load_tfds(download_dir=cache)
    np.testing.assert_array_equal(data.train_labels, arrays["train"][1])
    np.testing.assert_array_equal(data.test_images, _cifar_expected(arrays["test"][0]))
    assert len(list((cache / "extracted").glob("*/test_batch.bin"))) == 1
    cifar_mirror.unlink()
    again = cifar10._load_tfds(download_dir=cache)
    np.testing.assert_array_equal(again.train_images, data.train_images)


def test_cifar_tfds_incomplete_archive(cifar_mirror: Path, tmp_path: Path) -> None:
    _cifar_dir(tmp_path / "src")
    (tmp_path / "src" / "test_batch.bin").unlink()
    _archive(tmp_path / "src", cifar_mirror)
    cache = tmp_path / "downloads"
    with pytest.raises(DataError, match="cannot be extracted") as info:
        cifar10._load_tfds(download_dir=cache)
    _one_line(info, "no member cifar-10-batches-bin/test_batch.bin", cache, "Delete it", "CIFAR10_DIR")
    assert not list(cache.glob("extracted/*"))  # nothing half-unpacked is left to be reused


# --------------------------------------------------------------------------- by name, config


def test_load_dataset_dispatches_by_name(tmp_path: Path) -> None:
    _idx_dir(tmp_path / "idx")
    _cifar_dir(tmp_path / "cifar")
    assert load_dataset("mnist", tmp_path / "idx").name == "mnist"
    assert load_dataset("fashion_mnist", tmp_path / "idx").name == "fashion_mnist"
    assert load_dataset("cifar10", tmp_path / "cifar", verify_checksums=False).train_images.shape == (15, 3072)
    # the same IDX bytes, each dataset's own normalisation
    mnist, fashion = load_dataset("mnist", tmp_path / "idx"), load_dataset("fashion_mnist", tmp_path / "idx")
    assert not np.array_equal(mnist.train_images, fashion.train_images)
    assert Mnist is Dataset and isinstance(mnist, Mnist)
    with pytest.raises(DataError, match="Unknown dataset 'imagenet'") as info:
        load_dataset("imagenet")
    _one_line(info, "mnist, fashion_mnist, cifar10")


def test_config_names_are_the_registry_names() -> None:
    assert config_module.DATASETS == tuple(DATASETS)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_data_presets_compose(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"mnist": "MNIST_DIR", "fashion_mnist": "FASHION_MNIST_DIR", "cifar10": "CIFAR10_DIR"}[name]
    monkeypatch.setenv(env, f"/data/{name}")
    cfg = compose_config([f"data={name}"])
    assert {k: cfg["data"][k] for k in ("name", "dir", "verify_checksums")} == {
        "name": name,
        "dir": f"/data/{name}",
        "verify_checksums": True,
    }
    rc = validate(cfg)
    assert rc.data.name == name and rc.model.num_classes == 10
    monkeypatch.delenv(env)
    assert compose_config([f"data={name}"])["data"]["dir"] is None


def test_default_data_is_mnist() -> None:
    assert compose_config(["data.dir=/x"])["data"]["name"] == "mnist"


def test_unknown_data_name_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_config(["data.name=imagenet", "data.dir=/x"]))
    assert str(info.value) == "data.name = 'imagenet' is invalid: must be one of mnist, fashion_mnist, cifar10"


def test_num_classes_checked_against_cifar_labels(tmp_path: Path) -> None:
    from second_order.suite.experiment import check_data

    _cifar_dir(tmp_path)
    data = load_cifar10(tmp_path)
    classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
    rc = validate(
        compose_config(
            ["data=cifar10", f"data.dir={tmp_path}", f"model.num_classes={classes - 1}", "trainer.batch_size=4"]
        )
    )
    with pytest.raises(ConfigError, match=f"must be at least {classes}"):
        check_data(rc, data)
    check_data(
        validate(compose_config(["data=cifar10", f"data.dir={tmp_path}", "trainer.batch_size=4"])), data
    )  # 10 classes: fine


@pytest.mark.slow
def test_train_on_fashion_mnist(real_fashion_mnist_dir: Path, tmp_path: Path) -> None:
    from second_order.suite.experiment import run

    overrides = [
        "data=fashion_mnist",
        f"data.dir={real_fashion_mnist_dir}",
        "optimizer=sgd",
        "trainer.max_steps=30",
        "logger.wandb.mode=disabled",
        "trainer.progress=false",
    ]
    summary = run(compose_config(overrides), tmp_path / "run")
    assert summary["dataset"] == "fashion_mnist"
    assert summary["status"] == "budget" and summary["steps"] == 30
    assert summary["train_examples"] == 60000 and summary["test_examples"] == 10000
