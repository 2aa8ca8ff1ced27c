"""CIFAR-100 and CIFAR-10 (Krizhevsky, 2009), from a prepared TFDS copy or the python archive.

Where the data is looked for, first hit wins:

* with `data_dir`: the python copy in `data_dir` (the extracted `cifar-100-python/` or
  `cifar-10-batches-py/` folder, then the `cifar-100-python.tar.gz` / `cifar-10-python.tar.gz`
  archive; `data_dir` may also be that folder or that archive itself), then a TFDS copy prepared
  under `data_dir` used as the TFDS data dir (`<data_dir>/cifar100/3.0.2/...`). Nothing outside
  `data_dir` is looked at and nothing is downloaded: an explicit path never silently falls back
  to other data.
* without: a TFDS copy prepared in TFDS's default data dir (`$TFDS_DATA_DIR`, else
  `~/tensorflow_datasets`), then the python copy in the Keras cache (`$KERAS_HOME`, else
  `~/.keras`, under `datasets/` or `datasets/<folder>-target/`), where
  `keras.datasets.cifar100.load_data`, which the authors' `dataloader.py`
  (KD_methods_with_TF) calls, leaves it. Failing both, and only when asked (`download=True`;
  main.py asks unless `--no_download`), TFDS downloads the dataset from the address in its
  checksums (not its GCS mirror) and prepares it in its default data dir, with its own
  progress bars; later runs read that copy.

The download cannot hang on a machine without network: the address is first asked for its
headers with a `PROBE_TIMEOUT_S` deadline that covers the name lookup too, and a failure
there or in TFDS's download ends with one line naming what was tried and why it failed. (TFDS
sets no timeout on the transfer itself; once it has started, its progress bar shows it.)
What a failed or interrupted attempt wrote in the TFDS data dir (TFDS leaves its downloads'
temporary folders and the dataset's empty folders) is removed. `prepare_with_tfds` does the
same for any TFDS dataset (`tfds:<name>`, data/external.py).
TFDS shuffles examples when it prepares a dataset, so its order differs from the archive's;
both orders are fixed, but `take_train` picks different images from the two sources.

The python archive holds pickled dicts; they are read with an unpickler that only builds numpy
arrays, so a file planted in `--data_dir` cannot run code.
"""
import dataclasses
import functools
import os
import pickle
import queue
import shutil
import tarfile
import threading
import urllib.parse
import urllib.request
from typing import Tuple

import numpy as np

from sskd_tf.data.catalog import DATASETS, IMAGE_SHAPE, DatasetInfo, DatasetSource
from sskd_tf.errors import UserError

# Seconds the download address has to answer before a download is given up.
PROBE_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class PythonArchiveLayout:
    """Where a CIFAR python archive keeps its pickled batches, and their label key."""

    archive: str
    folder: str
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    label_key: bytes


LAYOUTS = {
    "cifar100": PythonArchiveLayout(
        archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        train_files=("train",), test_files=("test",), label_key=b"fine_labels"),
    "cifar10": PythonArchiveLayout(
        archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        label_key=b"labels"),
}

_ARRAY_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) not in _ARRAY_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def decode_batch(file, label_key):
    """One pickled CIFAR batch as (uint8 [N, 32, 32, 3] RGB images, int64 [N] labels).

    Each row of `b'data'` holds the 1024 red, then green, then blue values of a 32x32 image.
    """
    batch = _ArrayUnpickler(file, encoding="bytes").load()
    rows = np.asarray(batch[b"data"], dtype=np.uint8)
    images = rows.reshape(-1, IMAGE_SHAPE[2], *IMAGE_SHAPE[:2]).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch[label_key], dtype=np.int64)


def _concatenate(batches):
    images, labels = zip(*batches)
    return np.concatenate(images), np.concatenate(labels)


def _read_folder(folder, layout):
    def read(files):
        batches = []
        for file_name in files:
            with open(os.path.join(folder, file_name), "rb") as file:
                batches.append(decode_batch(file, layout.label_key))
        return _concatenate(batches)

    return (*read(layout.train_files), *read(layout.test_files))


def _read_archive(archive_path, layout):
    with tarfile.open(archive_path, "r:gz") as archive:
        def read(files):
            return _concatenate(
                decode_batch(archive.extractfile(f"{layout.folder}/{file_name}"), layout.label_key)
                for file_name in files)

        return (*read(layout.train_files), *read(layout.test_files))


def _has_batches(folder, layout):
    return all(os.path.isfile(os.path.join(folder, file_name))
               for file_name in layout.train_files + layout.test_files)


def find_python_copy(path, layout):
    """Reads the python copy at or directly under `path`; None when there is none."""
    if os.path.isfile(path):
        return _read_archive(path, layout) if path.endswith(".tar.gz") else None
    for folder in (os.path.join(path, layout.folder), path):
        if _has_batches(folder, layout):
            return _read_folder(folder, layout)
    archive_path = os.path.join(path, layout.archive)
    if os.path.isfile(archive_path):
        return _read_archive(archive_path, layout)
    return None


def default_tfds_dir():
    """TFDS's default data dir, as TFDS reads it: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets")


def _read_prepared(builder):
    import tensorflow_datasets as tfds

    arrays = []
    for split in ("train", "test"):
        images, labels = tfds.as_numpy(
            builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
        arrays += [images, labels]
    return tuple(arrays)


def find_tfds_copy(name, data_dir):
    """Reads the TFDS copy prepared under `data_dir`; None if unprepared."""
    if not os.path.isdir(os.path.join(data_dir, name)):
        return None
    import tensorflow_datasets as tfds  # imported on use: it is slow and pulls in TensorFlow

    builder = tfds.builder(name, data_dir=data_dir)
    return _read_prepared(builder) if builder.is_prepared() else None


def probe_url(url, timeout=None):
    """Raises OSError unless `url` answers a HEAD request within `timeout` seconds
    (default `PROBE_TIMEOUT_S`).

    urllib's timeout does not cover the name lookup, so the request runs in a daemon thread
    that is abandoned at the deadline. Like TFDS's download, it honours the *_proxy variables.
    """
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    outcome = queue.Queue(maxsize=1)

    def request():
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                        timeout=timeout):
                outcome.put(None)
        except Exception as error:  # noqa: BLE001  (handed to the waiting thread, raised there)
            outcome.put(error)

    threading.Thread(target=request, name=f"probe {url}", daemon=True).start()
    try:
        error = outcome.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no answer within {timeout:g} s") from None
    if error is not None:
        raise error


def first_line(error):
    """`TypeName: first line of the message` of an exception."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def download_failures():
    """What a failed download raises: socket and HTTP errors (requests' are OSErrors too),
    TFDS's failed-status error and its checksum mismatch (a truncated or altered archive)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import download_manager

    return OSError, tfds.download.DownloadError, download_manager.NonMatchingChecksumError


def _tfds_paths(builder):
    """The paths under the TFDS data dir that a download_and_prepare of `builder` writes in:
    the data dir, its dataset's folder and download folder with all they hold, and the
    shared download folders with their first level."""
    root = os.fspath(builder.data_dir_root)
    downloads = os.path.join(root, "downloads")
    found = set()
    for top in (root, downloads, os.path.join(downloads, "extracted"),
                os.path.join(downloads, "manual")):
        if os.path.isdir(top):
            found.update([top] + [os.path.join(top, entry) for entry in os.listdir(top)])
    for top in (os.path.join(root, builder.name), os.path.join(downloads, builder.name)):
        found.update(os.path.join(folder, entry) for folder, folders, files in os.walk(top)
                     for entry in folders + files)
    return found


def _remove_new(builder, before):
    """Remove what is under `_tfds_paths(builder)` now and was not in `before`."""
    new = _tfds_paths(builder) - before
    for path in sorted(path for path in new if os.path.dirname(path) not in new):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def prepare_with_tfds(builder, download_config=None):
    """Download and prepare `builder`'s dataset with TFDS after probing one of its
    addresses on each host (`probe_url`); when that fails or is interrupted, what this
    attempt wrote in the TFDS data dir is removed and the error raised again."""
    hosts = {}
    for url in sorted(builder.url_infos or {}):
        hosts.setdefault(urllib.parse.urlsplit(url).netloc, url)
    before = _tfds_paths(builder)
    try:
        for url in hosts.values():
            probe_url(url)
        builder.download_and_prepare(download_config=download_config)
    except BaseException:
        _remove_new(builder, before)
        raise


def download_tfds_copy(name, tfds_dir):
    """Downloads and prepares `name` in `tfds_dir` with TFDS, then reads it; a failure of the
    network or the download raises a one-line UserError."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=tfds_dir)
    urls = sorted(builder.url_infos or {})
    size_mib = sum(info.size for info in (builder.url_infos or {}).values()) / 2**20
    print(f"Downloading {name} ({size_mib:.0f} MiB) from {', '.join(urls)} with TFDS, to "
          f"prepare it once in {tfds_dir}", flush=True)
    try:
        prepare_with_tfds(builder, tfds.download.DownloadConfig(try_download_gcs=False))
    except download_failures() as error:
        raise UserError(
            f"{name} data not found and its download failed: tried TFDS's download of "
            f"{', '.join(urls)} into {tfds_dir}: {first_line(error)}; pass --data_dir=DIR "
            f"holding {LAYOUTS[name].archive} or a TFDS data dir with {name} prepared, or use "
            "--dataset=digits (bundled with the repo)") from None
    print(f"{name} is prepared in {builder.data_dir}; later runs read it from there", flush=True)
    return _read_prepared(builder)


def keras_cache_dirs(layout):
    """Where `keras.datasets` leaves the python copy it downloads."""
    datasets_dir = os.path.join(
        os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))), "datasets")
    return [datasets_dir, os.path.join(datasets_dir, f"{layout.folder}-target")]


def load_cifar(name, data_dir, download=False):
    """The four arrays of `name`, found (or downloaded) as the module docstring says; else a
    one-line UserError."""
    layout = LAYOUTS[name]
    if data_dir is not None:
        finders = [functools.partial(find_python_copy, data_dir, layout),
                   functools.partial(find_tfds_copy, name, data_dir)]
    else:
        finders = [functools.partial(find_tfds_copy, name, default_tfds_dir())]
        finders += [functools.partial(find_python_copy, cache_dir, layout)
                    for cache_dir in keras_cache_dirs(layout)]
    arrays = next((found for found in (find() for find in finders) if found is not None), None)
    if arrays is not None:
        return arrays
    if data_dir is not None:
        raise UserError(
            f"{name} data not found in --data_dir={data_dir} (nothing is downloaded into an "
            f"explicit --data_dir): it must hold {layout.archive}, its extracted {layout.folder}/ "
            f"or a TFDS data dir with {name} prepared; or leave --data_dir out to download "
            "it, or use --dataset=digits (bundled with the repo)")
    if not download:
        raise UserError(
            f"{name} data not found in the TFDS data dir {default_tfds_dir()} or the Keras cache, "
            f"and --no_download forbids fetching it: drop --no_download, pass --data_dir=DIR "
            f"holding {layout.archive} or a TFDS data dir with {name} prepared, or use "
            "--dataset=digits (bundled with the repo)")
    return download_tfds_copy(name, default_tfds_dir())


DATASETS.register("cifar100", DatasetSource(
    info=DatasetInfo("cifar100", num_classes=100, image_shape=IMAGE_SHAPE,
                     num_train=50_000, num_test=10_000),
    load=functools.partial(load_cifar, "cifar100")))
DATASETS.register("cifar10", DatasetSource(
    info=DatasetInfo("cifar10", num_classes=10, image_shape=IMAGE_SHAPE,
                     num_train=50_000, num_test=10_000),
    load=functools.partial(load_cifar, "cifar10")))
