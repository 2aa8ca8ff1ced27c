"""Tests of sskd_tf.data and flags/data.py on small data written here (no network)."""
import importlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from sskd_tf import data
from sskd_tf.data import recipes
from sskd_tf.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_images(rng, count):
    return rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def _cifar_rows(images):
    """The archive's row layout, written out: all red values, then green, then blue."""
    rows = np.zeros((len(images), 3072), np.uint8)
    for channel in range(3):
        rows[:, channel * 1024:(channel + 1) * 1024] = images[..., channel].reshape(-1, 1024)
    return rows


def _pickle_batch(images, label_key, labels):
    batch = {b"batch_label": b"fake", label_key: [int(label) for label in labels],
             b"data": _cifar_rows(images)}
    return pickle.dumps(batch, protocol=2)


def _write_python_copy(root, folder, batches, as_archive):
    """Writes {file name: pickled bytes} as `root/folder/` or as `root/<archive>`."""
    os.makedirs(root, exist_ok=True)
    if not as_archive:
        os.makedirs(os.path.join(root, folder))
        for file_name, payload in batches.items():
            with open(os.path.join(root, folder, file_name), "wb") as file:
                file.write(payload)
        return
    archive_name = {"cifar-100-python": "cifar-100-python.tar.gz",
                    "cifar-10-batches-py": "cifar-10-python.tar.gz"}[folder]
    with tarfile.open(os.path.join(root, archive_name), "w:gz") as archive:
        for file_name, payload in batches.items():
            member = tarfile.TarInfo(f"{folder}/{file_name}")
            member.size = len(payload)
            archive.addfile(member, io.BytesIO(payload))


def _fake_cifar100(root, as_archive, seed=0):
    rng = np.random.default_rng(seed)
    train, test = _random_images(rng, 6), _random_images(rng, 4)
    train_labels, test_labels = rng.integers(0, 100, 6), rng.integers(0, 100, 4)
    _write_python_copy(root, "cifar-100-python", {
        "train": _pickle_batch(train, b"fine_labels", train_labels),
        "test": _pickle_batch(test, b"fine_labels", test_labels)}, as_archive)
    return train, train_labels, test, test_labels


def _fake_cifar10(root, as_archive, seed=0):
    rng = np.random.default_rng(seed)
    train, test = _random_images(rng, 10), _random_images(rng, 3)
    train_labels, test_labels = rng.integers(0, 10, 10), rng.integers(0, 10, 3)
    batches = {f"data_batch_{i + 1}": _pickle_batch(train[2 * i:2 * i + 2], b"labels",
                                                     train_labels[2 * i:2 * i + 2])
               for i in range(5)}
    batches["test_batch"] = _pickle_batch(test, b"labels", test_labels)
    _write_python_copy(root, "cifar-10-batches-py", batches, as_archive)
    return train, train_labels, test, test_labels


def _assert_arrays_equal(loaded, expected):
    for got, want in zip(loaded, expected):
        np.testing.assert_array_equal(got, want)
    assert loaded[0].dtype == np.uint8 and loaded[1].dtype == np.int64


def test_registered_names_match_the_tensorflow_free_lists():
    assert data.DATASETS.names() == sorted(data.DATASET_NAMES)
    assert recipes.AUGMENTATIONS.names() == sorted(data.RECIPES)
    assert data.DEFAULT_DATASET == "cifar100" and data.DEFAULT_RECIPE == "kd_methods"


def test_dataset_info_needs_no_data():
    assert data.get_dataset_info("cifar100") == data.DatasetInfo(
        "cifar100", num_classes=100, image_shape=(32, 32, 3), num_train=50_000, num_test=10_000)
    assert data.get_dataset_info("cifar10").num_classes == 10
    assert data.get_dataset_info("digits").num_train == 1_437
    with pytest.raises(ValueError, match="digits"):
        data.get_dataset_info("mnist")


@pytest.mark.parametrize("as_archive", [False, True], ids=["folder", "archive"])
@pytest.mark.parametrize("fake", [_fake_cifar100, _fake_cifar10], ids=["cifar100", "cifar10"])
def test_python_copy_is_read_pixel_for_pixel(tmp_path, fake, as_archive):
    expected = fake(str(tmp_path), as_archive)
    name = "cifar100" if fake is _fake_cifar100 else "cifar10"
    loaded = data.load_arrays(name, data_dir=str(tmp_path))
    _assert_arrays_equal(loaded, expected)
    row = _cifar_rows(expected[0][:1])[0]
    assert loaded[0][0, 0, 1, 0] == row[1] and loaded[0][0, 2, 3, 2] == row[2048 + 2 * 32 + 3]


def test_data_dir_may_be_the_folder_or_the_archive_itself(tmp_path):
    expected = _fake_cifar100(str(tmp_path / "extracted"), as_archive=False)
    _assert_arrays_equal(
        data.load_arrays("cifar100", str(tmp_path / "extracted" / "cifar-100-python")), expected)
    expected = _fake_cifar100(str(tmp_path / "packed"), as_archive=True, seed=1)
    archive = tmp_path / "packed" / "cifar-100-python.tar.gz"
    _assert_arrays_equal(data.load_arrays("cifar100", str(archive)), expected)


def test_without_data_dir_the_keras_cache_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(data.cifar, "find_tfds_copy", lambda name, data_dir: None)
    with pytest.raises(ValueError, match="Keras cache"):
        data.load_arrays("cifar100")
    expected = _fake_cifar100(str(tmp_path / "datasets" / "cifar-100-python-target"),
                              as_archive=False)
    _assert_arrays_equal(data.load_arrays("cifar100"), expected)


def test_unpickler_refuses_anything_but_arrays(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for file_name in ("train", "test"):
        (folder / file_name).write_bytes(pickle.dumps({b"data": os.system}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load_arrays("cifar100", str(tmp_path))


def _cifar100_binary(images, fine_labels):
    """TFDS's source format: per image a coarse label byte, a fine label byte, then the row."""
    return b"".join(bytes([label % 20, label]) + row
                    for row, label in zip(map(bytes, _cifar_rows(images)), fine_labels))


def _fake_cifar100_source(tmp_path, monkeypatch, seed=3):
    """TFDS's cifar100 source files, written in `tmp_path/source`; returns the arrays in them."""
    try:
        importlib.import_module("importlib_resources")
    except ImportError:  # TFDS 4.9.10 needs it but does not declare it (tensorflow/datasets#11212)
        monkeypatch.setitem(sys.modules, "importlib_resources", importlib.import_module(
            "importlib.resources"))
    rng = np.random.default_rng(seed)
    train, test = _random_images(rng, 7), _random_images(rng, 3)
    train_labels, test_labels = rng.permutation(100)[:7], rng.permutation(100)[:3]
    source = tmp_path / "source" / "cifar-100-binary"
    source.mkdir(parents=True)
    (source / "train.bin").write_bytes(_cifar100_binary(train, train_labels))
    (source / "test.bin").write_bytes(_cifar100_binary(test, test_labels))
    (source / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
    (source / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    return train, train_labels, test, test_labels


def _assert_same_examples(loaded, expected):
    """TFDS reorders examples when it prepares them: compare them by their (unique) labels."""
    train, train_labels, test, test_labels = expected
    for got_images, got_labels, images, labels in ((*loaded[:2], train, train_labels),
                                                   (*loaded[2:], test, test_labels)):
        assert sorted(got_labels) == sorted(labels)
        by_label = dict(zip(labels, images))
        for image, label in zip(got_images, got_labels):
            np.testing.assert_array_equal(image, by_label[label])


def test_prepared_tfds_copy_is_read(tmp_path, monkeypatch):
    """Prepares a real TFDS cifar100 from fake source files, then loads it through our code."""
    import tensorflow_datasets as tfds

    expected = _fake_cifar100_source(tmp_path, monkeypatch)
    tfds_dir = tmp_path / "tfds"
    builder = tfds.builder("cifar100", data_dir=str(tfds_dir))
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           return_value=str(tmp_path / "source")):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))

    _assert_same_examples(data.load_arrays("cifar100", data_dir=str(tfds_dir)), expected)


def test_missing_cifar_is_downloaded_and_prepared_in_the_tfds_dir(tmp_path, monkeypatch):
    """TFDS's own download_and_prepare runs; only its fetch of the archive is replaced."""
    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    expected = _fake_cifar100_source(tmp_path, monkeypatch)
    probed = []
    monkeypatch.setattr(data.cifar, "probe_url", probed.append)
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           return_value=str(tmp_path / "source")) as fetch:
        _assert_same_examples(data.load_arrays("cifar100", download=True), expected)
    assert probed == ["https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"]
    assert fetch.call_count == 1
    assert tfds.builder("cifar100", data_dir=str(tmp_path / "tfds")).is_prepared()
    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                           side_effect=AssertionError("must not download again")):
        _assert_same_examples(data.load_arrays("cifar100", download=True), expected)


def test_probe_answers_gives_up_at_its_deadline_and_reports_refusals(monkeypatch):
    import http.server
    import socket
    import threading

    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data.cifar.probe_url(f"http://127.0.0.1:{server.server_port}/", timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free_port = unused.getsockname()[1]
    with pytest.raises(OSError, match="refused"):
        data.cifar.probe_url(f"http://127.0.0.1:{free_port}/", timeout=30)
    never = threading.Event()
    monkeypatch.setattr(data.cifar.urllib.request, "urlopen", lambda *_, **__: never.wait())
    with pytest.raises(TimeoutError, match="no answer within 0.2 s"):
        data.cifar.probe_url("https://cifar.invalid/archive.tar.gz", timeout=0.2)


def test_missing_cifar_with_data_dir_fails_at_once_naming_the_ways_out(tmp_path):
    import tensorflow_datasets as tfds

    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare",
                           side_effect=AssertionError("must not download")):
        with pytest.raises(UserError) as raised:
            data.load_arrays("cifar100", data_dir=str(tmp_path), download=True)
    message = str(raised.value)
    assert "\n" not in message
    assert f"--data_dir={tmp_path}" in message and "--dataset=digits" in message
    assert "nothing is downloaded" in message and "cifar-100-python.tar.gz" in message


# Runs main.py in a fresh interpreter after replacing the network calls of the download with
# `patches` (Python lines run first); TFDS and Keras look only under the test's directory.
_MAIN_WITH_PATCHES = """
import runpy, sys, threading
from unittest import mock
import tensorflow_datasets as tfds
from sskd_tf.data import cifar
{patches}
sys.argv = ["main.py"] + sys.argv[1:]
runpy.run_path("main.py", run_name="__main__")
"""


def _run_main_with(tmp_path, patches, *argv):
    env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"),
               KERAS_HOME=str(tmp_path / "keras"))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    script = _MAIN_WITH_PATCHES.format(patches=patches)
    return subprocess.run([sys.executable, "-c", script, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_one_line_usage_error(completed):
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert completed.stderr.count("\n") == 1, completed.stderr[-3000:]
    assert completed.stderr.startswith("main.py: error: ")
    return completed.stderr.strip()


_CIFAR_RUN = ("--dataset=cifar100", "--teacher=resnet8", "--mode=train")


def test_download_that_never_answers_ends_with_one_line_at_the_probe_deadline(tmp_path):
    patches = ("cifar.PROBE_TIMEOUT_S = 0.5\n"
               "cifar.urllib.request.urlopen = lambda *_, **__: threading.Event().wait()\n"
               "mock.patch.object(tfds.core.DatasetBuilder, 'download_and_prepare', "
               "side_effect=AssertionError('must not start the download')).start()")
    line = _assert_one_line_usage_error(
        _run_main_with(tmp_path, patches, *_CIFAR_RUN, f"--train_dir={tmp_path / 'run'}"))
    assert "cifar100 data not found and its download failed" in line
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz" in line
    assert "TimeoutError: no answer within 0.5 s" in line
    assert "--data_dir=DIR" in line and "--dataset=digits" in line


def test_failed_download_ends_with_the_first_line_of_its_error(tmp_path):
    patches = ("cifar.probe_url = lambda url: None\n"
               "mock.patch.object(tfds.download.DownloadManager, 'download_and_extract', "
               "side_effect=tfds.download.DownloadError("
               "'Failed to get url x. HTTP code: 503.\\nsecond line')).start()")
    line = _assert_one_line_usage_error(
        _run_main_with(tmp_path, patches, *_CIFAR_RUN, f"--train_dir={tmp_path / 'run'}"))
    assert "DownloadError: Failed to get url x. HTTP code: 503.;" in line
    assert "second line" not in line and "--dataset=digits" in line
    assert not (tmp_path / "tfds" / "cifar100" / "3.0.2").exists()


def test_no_download_never_calls_the_download(tmp_path):
    patches = ("cifar.probe_url = mock.Mock(side_effect=AssertionError('must not probe'))\n"
               "mock.patch.object(tfds.core.DatasetBuilder, 'download_and_prepare', "
               "side_effect=AssertionError('must not download')).start()")
    line = _assert_one_line_usage_error(_run_main_with(
        tmp_path, patches, *_CIFAR_RUN, "--no_download", f"--train_dir={tmp_path / 'run'}"))
    assert "--no_download forbids fetching it" in line and "--dataset=digits" in line


def test_digits_shapes_classes_and_fixed_split():
    train_images, train_labels, test_images, test_labels = data.load_arrays("digits")
    assert train_images.shape == (1437, 32, 32, 3) and test_images.shape == (360, 32, 32, 3)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int64
    assert set(train_labels) == set(test_labels) == set(range(10))
    assert np.all(np.abs(np.bincount(test_labels) - 36) <= 1)
    assert train_images.max() == 255 and train_images.min() == 0
    blocks = train_images[:, ::4, ::4, :].repeat(4, axis=1).repeat(4, axis=2)
    np.testing.assert_array_equal(train_images, blocks)
    np.testing.assert_array_equal(train_images[..., 0], train_images[..., 2])
    with np.load(data.digits.NPZ_PATH) as bundle:
        split = np.concatenate([bundle["train_indices"], bundle["test_indices"]])
    assert sorted(split) == list(range(1797))
    again = data.load_arrays("digits")
    np.testing.assert_array_equal(again[1], train_labels)
    np.testing.assert_array_equal(again[3], test_labels)


def test_normalisation_constants_are_applied_exactly():
    image = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    mean = np.array([112.4776, 124.1058, 129.3773])
    std = np.array([70.4587, 65.4312, 68.2094])
    normalized = recipes.normalize(image).numpy()
    np.testing.assert_allclose(normalized, (image - mean) / std, atol=1e-6)
    float32 = np.float32
    np.testing.assert_array_equal(
        normalized, (image.astype(float32) - mean.astype(float32)) / std.astype(float32))


def _seed(value):
    return tf.constant([value, 0], tf.int64)


def test_kd_methods_reflects_and_shares_one_crop_per_batch():
    image = np.arange(32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
    reflected = np.pad(image, [(4, 4), (4, 4), (0, 0)], mode="reflect")
    crops = {(row, col): reflected[row:row + 32, col:col + 32]
             for row in range(9) for col in range(9)}
    batch = tf.constant(np.repeat(image[None], 16, axis=0))
    offsets_seen, flip_counts = set(), set()
    for seed in range(30):
        out = recipes.kd_methods_augment(batch, _seed(seed)).numpy()
        assert out.shape == (16, 32, 32, 3)
        flipped = out[:, 0, 0, 0] > out[:, 0, -1, 0]
        flip_counts.add(int(flipped.sum()))
        batch_offsets = set()
        for augmented, was_flipped in zip(out, flipped):
            view = augmented[:, ::-1] if was_flipped else augmented
            matches = [key for key, crop in crops.items() if np.array_equal(view, crop)]
            assert len(matches) == 1
            row, col = matches[0]
            batch_offsets.add((row, 8 - col) if was_flipped else (row, col))
        assert len(batch_offsets) == 1  # one crop offset for the whole batch, as in the original
        offsets_seen |= batch_offsets
    assert len(offsets_seen) > 10 and any(0 in offset or 8 in offset for offset in offsets_seen)
    assert any(0 < count < 16 for count in flip_counts)  # flips are drawn per image


def _torchvision_crops(image, pad=4):
    """RandomCrop(32, padding=4) then RandomHorizontalFlip, every outcome:
    {(row, column, flipped): the crop of the zero-padded image}."""
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)])
    size = image.shape[0]
    return {(row, col, flipped): (crop[:, ::-1] if flipped else crop)
            for row in range(2 * pad + 1) for col in range(2 * pad + 1) for flipped in (False, True)
            for crop in [padded[row:row + size, col:col + size]]}


def test_crd2020_zero_pads_crops_and_flips_each_image_on_its_own():
    image = np.arange(1, 32 * 32 * 3 + 1, dtype=np.float32).reshape(32, 32, 3)
    crops = _torchvision_crops(image)
    out = recipes.crd2020_augment(tf.constant(np.repeat(image[None], 16, axis=0)), _seed(5)).numpy()
    outcomes = []
    for augmented in out:
        matches = [key for key, crop in crops.items() if np.array_equal(augmented, crop)]
        assert len(matches) == 1
        outcomes.append(matches[0])
    assert len({(row, col) for row, col, _ in outcomes}) > 8  # offsets drawn per image
    assert 0 < sum(flipped for _, _, flipped in outcomes) < 16  # flips drawn per image
    assert (out == 0).any()  # the padding is black, not the mean colour


# RepDistiller dataset/cifar100.py: ToTensor() then Normalize(mean, std), on [0, 1] RGB.
REPDISTILLER_MEAN = np.array([0.5071, 0.4867, 0.4408])
REPDISTILLER_STD = np.array([0.2675, 0.2565, 0.2761])


def _torchvision_normalize(images):
    return (images / 255.0 - REPDISTILLER_MEAN) / REPDISTILLER_STD


def test_crd2020_pipeline_augments_the_pixels_then_normalises_with_cifars_rgb_constants():
    train_ds, val_ds, _ = data.build_datasets("digits", batch_size=8, eval_batch_size=32,
                                              recipe="crd2020", take_train=8, take_test=40)
    train_images, _, test_images, _ = data.load_arrays("digits")
    images, _ = next(iter(train_ds))
    candidates = [_torchvision_normalize(crop) for image in train_images[:8]
                  for crop in _torchvision_crops(image.astype(np.float64)).values()]
    for augmented in images.numpy():
        assert any(np.allclose(augmented, candidate, atol=1e-5) for candidate in candidates)
    batches = [batch.numpy() for batch, _ in val_ds]
    assert [len(batch) for batch in batches] == [32, 8]
    np.testing.assert_allclose(np.concatenate(batches), _torchvision_normalize(test_images[:40]),
                               atol=1e-5)


def test_rotate_is_exact_at_right_angles():
    image = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    out = recipes.rotate(tf.constant(image), tf.constant([0.0, np.pi / 2])).numpy()
    np.testing.assert_array_equal(out[0], image[0])
    np.testing.assert_array_equal(out[1], np.rot90(image[1], k=1))


def test_eccv2018_keeps_shape_and_fills_with_zero():
    ones = tf.ones([32, 32, 32, 3])
    out = recipes.eccv2018_augment(ones, _seed(0)).numpy()
    assert out.shape == (32, 32, 32, 3)
    assert set(np.unique(out)) <= {0.0, 1.0} and (out == 0).any()
    per_image_zero_counts = (out == 0).sum(axis=(1, 2, 3))
    assert len(set(per_image_zero_counts)) > 1


def _batches(dataset, count):
    return [(images.numpy(), labels.numpy()) for images, labels in dataset.take(count)]


def test_each_pass_of_the_stream_holds_every_example_once_and_keeps_the_last_partial_batch():
    train_ds, val_ds, info = data.build_datasets(
        "digits", batch_size=128, eval_batch_size=200, take_train=300, take_test=250)
    assert info.num_train == 300 and info.num_test == 250 and info.num_classes == 10
    batches = _batches(train_ds, 6)
    assert [len(labels) for _, labels in batches] == [128, 128, 44] * 2
    expected = np.sort(data.load_arrays("digits")[1][:300])
    for first in (0, 3):
        labels = np.concatenate([labels for _, labels in batches[first:first + 3]])
        np.testing.assert_array_equal(np.sort(labels), expected)
    assert [int(labels.shape[0]) for _, labels in val_ds] == [200, 50]


def test_the_stream_replays_its_seed_and_reshuffles_each_pass():
    batches = _batches(data.build_datasets("digits", seed=0, take_train=300)[0], 4)
    first_pass_0, first_pass_1 = batches[0], batches[3]
    assert first_pass_0[0].dtype == np.float32 and first_pass_0[0].shape == (128, 32, 32, 3)
    assert not np.array_equal(first_pass_0[1], first_pass_1[1])
    same = _batches(data.build_datasets("digits", seed=0, take_train=300)[0], 1)[0]
    np.testing.assert_array_equal(first_pass_0[0], same[0])
    np.testing.assert_array_equal(first_pass_0[1], same[1])
    other = _batches(data.build_datasets("digits", seed=1, take_train=300)[0], 1)[0]
    assert not np.array_equal(first_pass_0[1], other[1])


@pytest.mark.parametrize("full_batches", [True, False])
@pytest.mark.parametrize("recipe", ["kd_methods", "eccv2018"])
def test_a_stream_started_mid_pass_is_the_tail_of_the_whole_stream(recipe, full_batches):
    """What a resumed run relies on: batch `step` depends on (seed, step) only (the full
    batches of the authors' cuts; one pass an epoch: on (seed, pass, step in the pass)).
    Step 5 lies in the second pass of 300 examples in batches of 128."""
    options = dict(batch_size=128, take_train=300, recipe=recipe, seed=5,
                   full_batches=full_batches)
    whole = _batches(data.build_datasets("digits", **options)[0], 9)
    resumed = _batches(data.build_datasets("digits", start_step=5, **options)[0], 4)
    for (images, labels), (replayed_images, replayed_labels) in zip(whole[5:], resumed):
        np.testing.assert_array_equal(replayed_images, images)
        np.testing.assert_array_equal(replayed_labels, labels)


def test_validation_batches_are_normalised_test_images_in_order():
    _, val_ds, _ = data.build_datasets("digits", recipe="eccv2018", take_test=250)
    _, _, test_images, test_labels = data.load_arrays("digits")
    images = np.concatenate([batch.numpy() for batch, _ in val_ds])
    labels = np.concatenate([batch.numpy() for _, batch in val_ds])
    np.testing.assert_array_equal(labels, test_labels[:250])
    np.testing.assert_array_equal(images, recipes.normalize(test_images[:250]).numpy())


def test_unknown_recipe_fails_before_loading():
    with pytest.raises(ValueError, match="kd_methods"):
        data.build_datasets("cifar100", recipe="autoaugment")


def test_data_flags_validate_at_parse_time(tmp_path):
    from absl import flags as absl_flags

    import flags.data  # noqa: F401

    flag_values = absl_flags.FLAGS
    try:
        flag_values(["main.py", "--dataset=digits", f"--data_dir={tmp_path}"])
        assert flag_values.dataset == "digits" and flag_values.data_dir == str(tmp_path)
        with pytest.raises(absl_flags.IllegalFlagValueError, match="no such file"):
            flag_values(["main.py", f"--data_dir={tmp_path / 'missing'}"])
        with pytest.raises(absl_flags.IllegalFlagValueError):
            flag_values(["main.py", "--dataset=imagenet"])
    finally:
        flag_values.unparse_flags()


def test_flag_module_does_not_import_tensorflow():
    script = ("import importlib.util, sys\n"
              "spec = importlib.util.spec_from_file_location('data_flags', 'flags/data.py')\n"
              "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
              "assert 'tensorflow' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True)
