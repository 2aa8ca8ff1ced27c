"""--strategy=multi_worker as two real worker processes on 127.0.0.1, from TF_CONFIG:
the chief alone writes, the weights equal a one-process MirroredStrategy run with the
same global batch (also for KD-SVD's clip rule with --sync_batch_norm), and a worker
killed mid-run stops the other with one line; both started again resume from the last
checkpoint."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.training import callbacks as run_callbacks

from main_cli import ERROR_PREFIX, REPO

RUN = ("--method=none", "--teacher=resnet8", "--dataset=digits", "--image_size=8", "--take_train=64",
       "--take_test=32", "--batch_size=32", "--seed=3")
# 64 examples in batches of 32: the authors' step count of E epochs is int(64 E) // 32 + 1.
STEPS_OF_EPOCHS = {1: 3, 2: 5}
# The same global batches of 32 in both runs; a random teacher saved once serves both.
SVD_RUN = ("--method=svd", "--sync_batch_norm") + RUN[1:]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _env(tmp_path, **extra):
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(scratch), **extra)


def _start_workers(tmp_path, *argv, run=RUN):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "main.py", "--strategy=multi_worker", *run, *argv], cwd=REPO,
            env=_env(tmp_path, TF_CONFIG=tf_config), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    return workers


def _finish(workers, timeout=900):
    return [(worker.wait(timeout=timeout), worker.stderr.read()) for worker in workers]


def _run_mirrored(tmp_path, train_dir, *argv, run=RUN):
    """The same run in one process, MirroredStrategy over 2 logical CPUs."""
    single = subprocess.run([sys.executable, "main.py", "--strategy=mirrored", *run, *argv,
                             f"--train_dir={train_dir}"], cwd=REPO, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]


def _assert_same_weights(multi_dir, mirrored_dir):
    """The same two half-batches of 16 meet the same weights in both runs; only the
    order of floating-point sums differs (a gRPC all-reduce against an in-process
    add, multithreaded CPU kernels): about 1e-7 relative per step, over the run's 3
    steps whose learning rate is 0.02. 1e-4 leaves room for that and catches any other
    update (another batch, another scaling, a missed step)."""
    for multi, mirrored in zip(_weights(multi_dir / "student.keras"),
                               _weights(mirrored_dir / "student.keras")):
        np.testing.assert_allclose(multi, mirrored, rtol=1e-4, atol=1e-6)


def _weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()


def _optimizer_steps(train_dir):
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints"))
    name = next(n for n in reader.get_variable_to_shape_map()
                if n.startswith("optimizer/") and "iteration" in n)
    return int(reader.get_tensor(name))


def test_two_workers_distil_as_one_mirrored_process_and_only_the_chief_writes(tmp_path,
                                                                             teacher_run):
    """KD-SVD from the session's teacher, clip active: the distillation gradient is clipped
    by the global task gradient and --sync_batch_norm normalises (and Bessel-corrects) over
    the global batch across the two processes, as one process does over its 2 replicas
    (the BN moving statistics are among the weights compared). Only the chief writes to
    --train_dir; the other worker's scratch copy is gone at the end."""
    argv = ("--epochs=1", f"--teacher_weights={os.path.join(teacher_run, 'student.keras')}")
    multi_dir, mirrored_dir = tmp_path / "multi", tmp_path / "mirrored"
    for status, stderr in _finish(_start_workers(tmp_path, *argv, f"--train_dir={multi_dir}",
                                                 run=SVD_RUN)):
        assert status == 0, stderr[-3000:]
    assert sorted(os.listdir(multi_dir)) == [".lock", "checkpoints", "history.csv", "logs",
                                            "results.json", "run.json", "student.keras",
                                            "student_export"]
    assert os.listdir(tmp_path / "tmp") == []
    _run_mirrored(tmp_path, mirrored_dir, *argv, run=SVD_RUN)
    for train_dir in (multi_dir, mirrored_dir):
        assert float(run_callbacks.read_history(train_dir)[0]["clip_ratio"]) < 1.0
    _assert_same_weights(multi_dir, mirrored_dir)
    assert _optimizer_steps(multi_dir) == STEPS_OF_EPOCHS[1]


@pytest.mark.slow  # two workers, killed and resumed: 45 s
def test_a_killed_worker_stops_the_other_with_one_line_and_both_resume(tmp_path):
    chief_dir = tmp_path / "run"
    argv = ("--epochs=2", f"--train_dir={chief_dir}")
    chief, worker = _start_workers(tmp_path, *argv)
    state = chief_dir / "checkpoints" / "checkpoint"
    deadline = time.time() + 900
    while not state.exists():
        assert chief.poll() is None and worker.poll() is None, chief.stderr.read()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    status = chief.wait(timeout=300)  # no hang: the chief notices the lost worker
    errors = [line for line in chief.stderr.read().splitlines() if line.startswith(ERROR_PREFIX)]
    assert status == 1
    assert len(errors) == 1 and "another worker of --strategy=multi_worker stopped" in errors[0]
    assert "start every worker again with the same command" in errors[0]
    saved = _optimizer_steps(chief_dir)
    assert saved >= 2 and not (chief_dir / "results.json").exists()
    for status, stderr in _finish(_start_workers(tmp_path, *argv)):
        assert status == 0, stderr[-3000:]
    assert _optimizer_steps(chief_dir) == STEPS_OF_EPOCHS[2]
    with open(chief_dir / "results.json") as handle:
        assert len(json.load(handle)["val_accuracy"]) == 2
