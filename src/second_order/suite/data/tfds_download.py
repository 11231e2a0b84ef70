"""Fetching a dataset's raw files with TensorFlow Datasets' download manager (no TensorFlow).

``tfds.download.DownloadManager`` downloads into ``<TFDS data dir>/downloads``
(``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), verifying the SHA-256 that TFDS
registers for the URL (``tensorflow_datasets/url_checksums/<builder>.txt``). Only
``tensorflow-datasets`` is needed (its extractor would need TensorFlow, so archives
are unpacked by the dataset's own module) (``pip install '.[tfds]'`` from a checkout).
Files already in the cache are used without touching the network; otherwise the
mirror's host is probed first (a few seconds at most) so that an offline run fails at
once instead of after minutes of download retries, and TFDS retries each file at most
``_TFDS_MAX_RETRIES`` times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .base import DataError

# How long the reachability probe of the mirror may take, and how many times TFDS's
# HTTP session may retry one file (its default, 10 with back-off, takes minutes).
_PROBE_TIMEOUT_S = 3.0
_TFDS_MAX_RETRIES = 3


@dataclasses.dataclass(frozen=True)
class Hints:
    """The words of a dataset's error messages."""

    title: str  # "MNIST"
    env_var: str  # "MNIST_DIR"
    files: str  # "the four IDX files (train-images-idx3-ubyte.gz, ...)"
    unset: str  # "data.dir and MNIST_DIR are unset"

    @property
    def set_dir(self) -> str:
        return f"set data.dir=<dir> / {self.env_var} to a directory holding {self.files}"

    @property
    def corrupt_fix(self) -> str:
        """The fix for a bad file in the download cache."""
        return f"Delete it so that TensorFlow Datasets downloads it again, or {self.set_dir}."


def import_tfds(hints: Hints) -> Any:
    """The ``tensorflow_datasets`` module, or a :class:`DataError` saying how to get the data."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"No {hints.title} directory was given ({hints.unset}) and tensorflow-datasets cannot be "
            f"imported ({e}). Run pip install 'tensorflow-datasets>=4.9' (from a checkout: pip install '.[tfds]') "
            f"to download {hints.title} through "
            f"TensorFlow Datasets, or {hints.set_dir}."
        ) from e
    return tfds


def default_download_dir(tfds: Any) -> Path:
    return Path(tfds.core.constants.DATA_DIR) / "downloads"


def download(
    urls: Mapping[str, str],
    hints: Hints,
    mirror: str,
    download_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Downloads ``{key: url}`` (all under ``mirror``) into the TFDS cache; returns ``{key: path}``."""
    tfds = import_tfds(hints)
    from tensorflow_datasets.core.download import checksums as tfds_checksums

    if download_dir is None:
        download_dir = default_download_dir(tfds)
    registered = tfds_checksums.get_all_url_infos()
    manager = tfds.download.DownloadManager(
        download_dir=download_dir,
        url_infos={url: registered[url] for url in urls.values() if url in registered},
    )
    if not _tfds_cached(manager, urls.values()):
        problem = _unreachable(mirror)
        if problem is not None:
            raise DataError(
                f"Cannot download {hints.title} from {mirror}: {problem}, and the files are not in the "
                f"TensorFlow Datasets download cache {download_dir}. Set data.dir=<dir> / {hints.env_var} "
                f"to a directory holding {hints.files}, or connect to the internet."
            )
    try:
        with _bounded_tfds_retries():
            downloaded = manager.download(dict(urls))
    except Exception as e:  # network, HTTP, checksum or disk errors, all alike to the user
        raise DataError(
            f"Downloading {hints.title} from {mirror} with TensorFlow Datasets into {download_dir} failed "
            f"({type(e).__name__}: {e}). Check the internet connection, or {hints.set_dir}."
        ) from e
    return {key: Path(os.fspath(downloaded[key])) for key in urls}


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
