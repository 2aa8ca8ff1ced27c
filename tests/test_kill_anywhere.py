"""kill -9 anywhere: a digits run killed with SIGKILL inside a checkpoint save (data
written, not yet recorded), inside the export of the student, inside the write of
results.json and at random moments, resumed each time, ends with the right step count,
no half-written file, and (--seed --deterministic: a resumed run replays the stream it
was killed in) the weights of an uninterrupted run, trained in the same process as the
last resume. The short variant runs in CI; the long one (`-m slow`) adds random kills."""
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.training import files

from main_cli import REPO

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
EXAMPLES, BATCH, EPOCHS = 128, 32, 3
# The authors' step count (KD_methods_with_TF train_w_distill.py): int(N * E) // B + 1.
TOTAL_STEPS = EXAMPLES * EPOCHS // BATCH + 1
# A run that, when PAUSE_IN names a write, stops in the middle of it (touching the
# file argv[2] first) so that the test can kill it exactly there.
RUN_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import tensorflow as tf
    from sskd_tf.training import files
    from sskd_tf.training.config import RunConfig
    from sskd_tf.training.run import train

    def pause():
        open(sys.argv[2], "w").close()
        time.sleep(600)

    window = os.environ.get("PAUSE_IN")
    if window == "checkpoint":
        def written_not_recorded(manager):
            pause()
        tf.train.CheckpointManager._record_state = written_not_recorded
    elif window == "export":
        def export_paused(model):
            pause()
        files.models.logits_model = export_paused
    elif window == "results":
        def half_dump(payload, handle, **kwargs):
            handle.write(files.json.dumps(payload)[:20])
            handle.flush()
            pause()
        files.json.dump = half_dump
    for train_dir in sys.argv[1:2] + sys.argv[3:]:  # the run, then an uninterrupted one
        train(RunConfig(teacher="resnet8", student="resnet8", method="none", dataset="digits",
                        image_size=8, batch_size=%d, take_train=%d, take_test=32, epochs=%d,
                        verbose=0, seed=5, deterministic=True, train_dir=train_dir))
""" % (BATCH, EXAMPLES, EPOCHS))


def _start(train_dir, marker, pause_in="", reference_dir=None):
    references = [str(reference_dir)] if reference_dir else []
    return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(train_dir), str(marker),
                             *references],
                            cwd=REPO, env=dict(ENV, PAUSE_IN=pause_in),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path, process, timeout=900):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if process.poll() is not None:
            return False
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)
    return True


def _kill(process):
    process.send_signal(signal.SIGKILL)
    process.wait()


def _kill_in(train_dir, tmp_path, window):
    """Run until it pauses inside `window`, then SIGKILL it there."""
    marker = tmp_path / f"paused_in_{window}"
    process = _start(train_dir, marker, window)
    assert _wait_for(marker, process), process.stderr.read()[-3000:]
    _kill(process)


def _kill_at_random(train_dir, tmp_path, rng):
    """SIGKILL at a random moment once the run has started training, or let it end:
    whether it was killed."""
    process = _start(train_dir, tmp_path / "unused")
    if _wait_for(os.path.join(train_dir, "logs"), process):
        time.sleep(rng.uniform(0.0, 20.0))
    if process.poll() is not None:
        _, stderr = process.communicate()
        assert process.returncode == 0, stderr[-3000:]
        return False
    _kill(process)
    return True


def _optimizer_steps(train_dir):
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints"))
    name = next(n for n in reader.get_variable_to_shape_map()
                if n.startswith("optimizer/") and "iteration" in n)
    return int(reader.get_tensor(name))


def _finish_and_check(train_dir):
    """Resume the run to its end (unless it has ended), train the same run uninterrupted
    beside it, and check that the two are equal."""
    reference_dir = train_dir.parent / "uninterrupted"
    if (train_dir / "results.json").exists():
        process = _start(reference_dir, "unused")
    else:
        process = _start(train_dir, "unused", reference_dir=reference_dir)
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    assert _optimizer_steps(train_dir) == TOTAL_STEPS
    with open(os.path.join(train_dir, "results.json")) as handle:
        assert len(json.load(handle)["val_accuracy"]) == EPOCHS
    leftovers = [path for pattern in (".saving-*", "*.tmp", "checkpoints/*_temp")
                 for path in glob.glob(os.path.join(train_dir, pattern))]
    assert leftovers == []
    student = keras.saving.load_model(os.path.join(train_dir, "student.keras"), compile=False)
    reference = keras.saving.load_model(os.path.join(reference_dir, "student.keras"),
                                        compile=False)
    for weight, expected in zip(student.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(weight, expected)
    assert os.path.exists(os.path.join(train_dir, "student_export", "saved_model.pb"))


def test_killed_inside_each_write_the_run_resumes_to_the_end(tmp_path):
    train_dir = tmp_path / "run"
    _kill_in(train_dir, tmp_path, "checkpoint")
    assert not glob.glob(str(train_dir / "checkpoints" / "checkpoint"))  # nothing recorded
    _kill_in(train_dir, tmp_path, "export")
    assert glob.glob(str(train_dir / ".saving-*"))  # the kill left a half-done export ...
    _kill_in(train_dir, tmp_path, "results")
    assert glob.glob(str(train_dir / "*.tmp")) and not (train_dir / "results.json").exists()
    _finish_and_check(train_dir)  # ... which the resumed run removes


@pytest.mark.slow
def test_killed_at_random_moments_the_run_resumes_to_the_end(tmp_path):
    train_dir = tmp_path / "run"
    rng = np.random.default_rng()
    _kill_in(train_dir, tmp_path, "checkpoint")
    # A short run on an idle machine can end before its random moment: then it is checked
    # as it ended.
    for _ in range(8):
        if not _kill_at_random(train_dir, tmp_path, rng):
            break
    _finish_and_check(train_dir)


def test_leftovers_of_a_killed_write_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "checkpoints" / "ckpt-3_temp").mkdir(parents=True)
    (tmp_path / "checkpoints" / "ckpt-3_temp" / "part-00000-of-00001.data").write_bytes(b"x")
    (tmp_path / "checkpoints" / "ckpt-2.index").write_bytes(b"kept")
    (tmp_path / ".saving-abc").mkdir()
    (tmp_path / "tmpk2j4.tmp").write_text('{"last_val')
    (tmp_path / "results.json").write_text("{}")
    files.remove_leftovers(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "results.json"]
    assert os.listdir(tmp_path / "checkpoints") == ["ckpt-2.index"]
