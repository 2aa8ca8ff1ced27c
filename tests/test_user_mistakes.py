"""Mistakes a user can fix are one line and exit status 2, never an internal error:
each case names the file or the value that is wrong and what is allowed."""
import builtins
import errno
import os
import re
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from sskd_tf import models
from sskd_tf.data import build_datasets
from sskd_tf.errors import UserError
from sskd_tf.training.config import RunConfig
from sskd_tf.training.run import train
from sskd_tf.training.teacher import load_teacher_weights

from main_cli import ERROR_PREFIX, REPO, main_error, main_errors


def test_a_flagfile_that_is_not_utf8_is_one_line(tmp_path):
    flagfile = tmp_path / "latin1.flags"
    flagfile.write_bytes("--mode=summary\n--teacher=r\xe9snet8\n".encode("latin-1"))
    error, _ = main_error(f"--flagfile={flagfile}")
    assert error.endswith(f"--flagfile={flagfile} is not UTF-8 text: line 2 holds the byte 0xe9; "
                          "save the file as UTF-8")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"--flagfile={flagfile}\n")
    error, _ = main_error(f"--flagfile={outer}")
    assert f"--flagfile={flagfile} is not UTF-8 text" in error


# Any digits run: the old code trained on with these values until TensorFlow failed.
RUN = ("--dataset=digits", "--image_size=8", "--teacher=resnet8", "--take_train=64",
       "--take_test=32", "--batch_size=32", "--epochs=1", "--method=none")


@pytest.mark.parametrize("flag, value, allowed", [
    ("batch_size", "99999999999999999999", "an integer in the range [1, 2147483647]"),
    ("image_size", "3000000000", "an integer in the range [1, 2147483647]"),
    ("seed", "99999999999999999999", "an integer in the range [0, 4294967295]"),
    ("seed", "-1", "an integer in the range [0, 4294967295]"),
])
def test_an_integer_flag_out_of_range_is_refused_at_parse_time(tmp_path, flag, value, allowed):
    error, _ = main_error(*RUN, f"--{flag}={value}", f"--train_dir={tmp_path}")
    assert error.endswith(f"flag --{flag}={value}: {value} is not {allowed}")
    assert not os.listdir(tmp_path)


def test_the_last_seed_of_a_comparison_must_be_a_seed(tmp_path):
    error, _ = main_error(*RUN, "--mode=compare", "--seed=4294967294", "--seeds=3",
                          f"--train_dir={tmp_path}")
    assert "the last seed, --seed + --seeds - 1, must not exceed 4294967295" in error


# What --help says of a flag's values, and values its checks refuse.
HELP_RANGES = {
    "learning_rate": ("a positive number", ("0", "-0.1")),
    "validation_split": ("a number strictly between 0 and 1", ("0", "1")),
    "lr_decay_points": ("each strictly between 0 and 1, increasing", ("0.6,0.3", "0.5,1")),
    "seed": ("(an integer in the range [0, 4294967295])", ("4294967296",)),
    "seeds": ("(an integer in the range [1, 2147483647])", ("0",)),
    "take_train": ("(an integer in the range [1, 2147483647])", ("0",)),
}


def test_help_states_the_ranges_the_checks_enforce(tmp_path):
    completed = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=60)
    entries = {entry.split(":", 1)[0]: " ".join(entry.split())
               for entry in re.split(r"\n  --(?:\[no\])?", completed.stdout)}
    for flag, (stated, refused) in HELP_RANGES.items():
        assert stated in entries[flag], entries[flag]
        for value in refused:
            error, _ = main_error(f"--{flag}={value}", f"--train_dir={tmp_path}")
            assert error.startswith(f"{ERROR_PREFIX} flag --{flag}="), error


def test_every_integer_flag_has_both_bounds():
    import flags  # noqa: F401  (defines the flags)
    from absl.flags import FLAGS, IntegerParser

    bounded = {flag.name: (flag.parser.lower_bound, flag.parser.upper_bound)
               for module in flags.MODULES for flag in FLAGS.get_flags_for_module(module)
               if isinstance(flag.parser, IntegerParser)}
    assert len(bounded) >= 13
    assert all(None not in bounds for bounds in bounded.values()), bounded


def _image_folder(root, classes_of_split):
    """root/<split>/<class>/<i>.png: two 8x8 PNGs per class."""
    from PIL import Image

    for split, classes in classes_of_split.items():
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for index in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * label + index, np.uint8)).save(
                    root / split / name / f"{index}.png")
    return root


def test_a_corrupt_image_of_a_folder_dataset_is_named(tmp_path):
    root = _image_folder(tmp_path / "images", {"train": ("cat", "dog"), "test": ("cat", "dog")})
    truncated = root / "train" / "dog" / "1.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(UserError, match=f"^{re.escape(str(truncated))} is not a readable image "
                                        r"\(Invalid PNG.*\); replace or remove it$"):
        build_datasets(f"folder:{root}", batch_size=2, image_size=8)
    first = root / "train" / "cat" / "0.png"
    first.write_text("not an image")  # read first, for the image size
    with pytest.raises(UserError, match=f"^{re.escape(str(first))} is not a readable image "
                                        r"\(Unknown image file format\..*\); replace or remove it$"):
        build_datasets(f"folder:{root}", batch_size=2)


@pytest.mark.parametrize("test_classes, differences", [
    (("bird", "cat"), "only in train/: dog; only in test/: bird"),
    (("bird", "cat", "dog"), "only in test/: bird"),
])
def test_train_and_test_folders_with_other_classes_are_refused(tmp_path, test_classes, differences):
    root = _image_folder(tmp_path / "images", {"train": ("cat", "dog"), "test": test_classes})
    with pytest.raises(UserError) as raised:
        build_datasets(f"folder:{root}", batch_size=2, image_size=8)
    assert str(raised.value) == (f"folder:{root}: train/ and test/ hold different classes "
                                 f"({differences}); give both the same class subfolders")


def _unreadable(monkeypatch, path):
    """Opening `path` fails as for a file without read permission (which root, who may
    run the tests, would read anyway)."""
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if os.fspath(file) == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)


def _load_as(entry, path):
    if entry == "--teacher_weights":
        load_teacher_weights(models.build_model("resnet8", 10, (8, 8, 3)), str(path))
    else:
        models.build_model(str(path), 10, (8, 8, 3), role=entry.lstrip("-"))


@pytest.mark.parametrize("entry", ["--teacher_weights", "--teacher", "--student"])
def test_an_unreadable_keras_file_says_what_is_wrong_with_it(tmp_path, monkeypatch, entry):
    directory = tmp_path / "a_directory.keras"
    directory.mkdir()
    text = tmp_path / "text.keras"
    text.write_text("not a zip archive")
    locked = tmp_path / "locked.keras"
    models.build_model("resnet8", 10, (8, 8, 3)).save(locked)
    _unreadable(monkeypatch, locked)
    for path, problem in [
            (directory, "it is a directory, not a .keras file"),
            (text, "it is not a complete zip archive, as a .keras file is (truncated, or another "
                   "kind of file); write it again with Keras' model.save"),
            (locked, "Permission denied")]:
        with pytest.raises(UserError) as raised:
            _load_as(entry, path)
        assert str(raised.value) == f"{entry}: cannot read {str(path)!r}: {problem}"


def test_weights_h5_of_another_network_give_the_first_mismatch_with_both_shapes(tmp_path):
    path = str(tmp_path / "resnet14.weights.h5")
    models.build_model("resnet14", 10, (8, 8, 3)).save_weights(path)
    teacher = models.build_model("resnet8", 10, (8, 8, 3))
    before = [weights.copy() for weights in teacher.get_weights()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UserError) as raised:
            load_teacher_weights(teacher, path)
    assert str(raised.value) == (
        f"--teacher_weights {path!r} does not fit resnet8: 56 weight arrays differ (the file "
        "holds 82, resnet8 52), the first: stage1_block0_conv0 (layers/conv2d_4/vars/0, the "
        "file's stage0_block1_conv0) is (3, 3, 64, 64) in the file, (3, 3, 64, 128) in resnet8")
    assert not [warning for warning in caught if issubclass(warning.category, UserWarning)]
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    models.build_model("resnet8", 100, (8, 8, 3)).save_weights(path)
    with pytest.raises(UserError, match=r"2 weight arrays differ \(the file holds 52, resnet8 52\), "
                                        r"the first: logits \(layers/dense/vars/0\) is \(256, 100\) "
                                        r"in the file, \(256, 10\) in resnet8$"):
        load_teacher_weights(teacher, path)


GIB = 2**30
TINY = dict(teacher="resnet8", dataset="digits", image_size=8, take_train=64, take_test=32,
            batch_size=32, epochs=1, verbose=0)


def test_a_run_that_needs_more_memory_than_there_is_is_refused_up_front(tmp_path, monkeypatch):
    from sskd_tf.training import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 24 * GIB)
    train_dir = tmp_path / "run"
    with pytest.raises(UserError) as raised:  # before: resized the digits in 23 GB, then killed
        train(RunConfig(method="svd", train_dir=str(train_dir), **dict(TINY, image_size=1000)))
    assert re.fullmatch(
        r"a run on digits \(--image_size=1000, --batch_size=32\) needs about \d+\.\d GiB of "
        r"memory, more than the 24\.0 GiB available \(training the student at batch 32 "
        r"\d+\.\d GiB, .*resizing 11\.4 GiB.*\); lower --batch_size, --image_size, --take_train "
        r"or --take_test",
        str(raised.value)), str(raised.value)
    assert not train_dir.exists()
    normal_runs = [RunConfig(dataset="cifar100"), RunConfig(dataset="cifar10", recipe="eccv2018"),
                   RunConfig(dataset="digits", teacher="resnet14", student="resnet8",
                             image_size=16, batch_size=64),
                   RunConfig(method="none", **TINY), RunConfig(method="svd", **TINY)]
    for config in normal_runs:
        memory.check_memory(config.resolved())
    assert sum(memory.estimate(normal_runs[0].resolved()).values()) < 2 * GIB


def _in_thread(function, timeout):
    """What `function()` raised, or AssertionError when it has not returned within `timeout` s."""
    outcome = []

    def run():
        try:
            function()
        except BaseException as error:  # noqa: BLE001  (handed to the test)
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still waiting after {timeout} s"
    return outcome[0] if outcome else None


def test_a_tfds_dataset_offline_gives_up_at_the_probe_deadline_and_leaves_nothing(tmp_path,
                                                                                 monkeypatch):
    import requests

    from sskd_tf.data import cifar

    tfds_dir = tmp_path / "tfds"
    tfds_dir.mkdir()
    never = threading.Event()
    monkeypatch.setattr(cifar, "PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(cifar.urllib.request, "urlopen", lambda *_, **__: never.wait())
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", lambda *_, **__: never.wait())
    load = lambda: build_datasets("tfds:mnist", data_dir=str(tfds_dir), image_size=8)
    try:
        error = _in_thread(load, timeout=10)
    finally:
        never.set()  # lets a request still waiting end, and the test process exit
    assert isinstance(error, UserError) and "\n" not in str(error)
    assert str(error).startswith(f"tfds:mnist: downloading and preparing it in {tfds_dir} failed "
                                 "(TimeoutError: no answer within 0.5 s); nothing of the attempt")
    assert list(tfds_dir.iterdir()) == []

    def no_network(*_, **__):
        raise requests.ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(cifar, "probe_url", lambda url: None)
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", no_network)
    error = _in_thread(load, timeout=60)
    assert isinstance(error, UserError), error
    assert "(ConnectionError: Failed to resolve 'storage.googleapis.com')" in str(error)
    assert list(tfds_dir.iterdir()) == []  # TFDS left downloads/mnist/*.tmp.*/ and mnist/


# main.py with its run replaced by one that fails mid-epoch, after a Keras progress bar,
# in a process that prints warnings on stderr while it exits (as TensorFlow may).
FAILS_MID_EPOCH = """
import atexit, os, runpy, sys
from absl import logging
from sskd_tf import quiet_start
quiet_start.import_tensorflow_quietly()
from sskd_tf import modes
from sskd_tf.errors import UserError

def fails_mid_epoch(mode, flag_values):
    import keras

    keras.utils.Progbar(4).update(1)
    atexit.register(lambda: (logging.warning("a warning at exit"),
                             os.write(2, b"W tensorflow/core/at_exit.cc:1] at exit\\n")))
    raise UserError("the disk is full")

modes.run = fails_mid_epoch
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


def test_the_error_line_starts_on_a_fresh_line_and_nothing_follows_it():
    completed = subprocess.run([sys.executable, "-c", FAILS_MID_EPOCH], cwd=REPO, timeout=300,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert completed.returncode == 2, completed.stdout[-2000:]
    assert "Traceback" not in completed.stdout
    bar, error = completed.stdout.rstrip("\n").rsplit("\n", 1)
    assert "1/4" in bar and error == f"{ERROR_PREFIX} the disk is full", completed.stdout[-2000:]
    assert completed.stdout.endswith("\n") and completed.stdout.count(ERROR_PREFIX) == 1


def test_a_corrupt_image_and_weights_of_another_network_through_main_py(tmp_path):
    root = _image_folder(tmp_path / "images", {"train": ("cat", "dog"), "test": ("cat", "dog")})
    truncated = root / "test" / "cat" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    weights = tmp_path / "resnet14.weights.h5"
    models.build_model("resnet14", 10, (8, 8, 3)).save_weights(weights)
    (image_error, _), (weights_error, stderr) = main_errors(
        [f"--dataset=folder:{root}", "--image_size=8", "--teacher=resnet8", "--method=none",
         "--batch_size=2", f"--train_dir={tmp_path / 'images_run'}"],
        [*RUN[:-1], "--method=soft_logits", f"--teacher_weights={weights}",
         f"--train_dir={tmp_path / 'run'}"])
    assert image_error.startswith(f"{ERROR_PREFIX} {truncated} is not a readable image (Invalid PNG")
    assert "does not fit resnet8: 56 weight arrays differ" in weights_error
    assert "(3, 3, 64, 64)" in weights_error
    assert "Warning" not in stderr, stderr[-2000:]
