"""--strategy=multi_worker as two real worker processes on 127.0.0.1, from TF_CONFIG:
the chief alone writes, the weights equal a one-process MirroredStrategy run with the
same global batch, and a worker killed mid-run stops the other with one line; both
started again resume from the last checkpoint."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from main_cli import ERROR_PREFIX, REPO

RUN = ("--method=none", "--teacher=resnet8", "--dataset=digits", "--image_size=8", "--take_train=64",
       "--take_test=32", "--batch_size=32", "--seed=3")
# 64 examples in batches of 32: the authors' step count of E epochs is int(64 E) // 32 + 1.
STEPS_OF_EPOCHS = {1: 3, 3: 7}


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


def _start_workers(tmp_path, *argv):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "main.py", "--strategy=multi_worker", *RUN, *argv], cwd=REPO,
            env=_env(tmp_path, TF_CONFIG=tf_config), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    return workers


def _finish(workers, timeout=900):
    return [(worker.wait(timeout=timeout), worker.stderr.read()) for worker in workers]


def _weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()


def _optimizer_steps(train_dir):
    reader = tf.train.load_checkpoint(os.path.join(train_dir, "checkpoints"))
    name = next(n for n in reader.get_variable_to_shape_map()
                if n.startswith("optimizer/") and "iteration" in n)
    return int(reader.get_tensor(name))


def test_two_workers_train_as_one_mirrored_process_and_only_the_chief_writes(tmp_path):
    chief_dir = tmp_path / "multi"
    outcomes = _finish(_start_workers(tmp_path, "--epochs=1", f"--train_dir={chief_dir}"))
    for status, stderr in outcomes:
        assert status == 0, stderr[-3000:]
    assert sorted(os.listdir(chief_dir)) == [".lock", "checkpoints", "history.csv", "logs",
                                            "results.json", "run.json", "student.keras",
                                            "student_export"]
    assert os.listdir(tmp_path / "tmp") == []  # the worker's scratch copy is gone
    mirrored_dir = tmp_path / "mirrored"
    single = subprocess.run([sys.executable, "main.py", "--strategy=mirrored", *RUN, "--epochs=1",
                             f"--train_dir={mirrored_dir}"], cwd=REPO, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    # The same two half-batches of 16 meet the same weights in both runs; only the
    # order of floating-point sums differs (a gRPC all-reduce against an in-process
    # add, multithreaded CPU kernels): about 1e-7 relative per step, over 2 steps
    # whose learning rate is 0.02. 1e-4 leaves room for that and catches any other
    # update (another batch, another scaling, a missed step).
    for multi, mirrored in zip(_weights(chief_dir / "student.keras"),
                               _weights(mirrored_dir / "student.keras")):
        np.testing.assert_allclose(multi, mirrored, rtol=1e-4, atol=1e-6)
    assert _optimizer_steps(chief_dir) == STEPS_OF_EPOCHS[1]


def test_a_killed_worker_stops_the_other_with_one_line_and_both_resume(tmp_path):
    chief_dir = tmp_path / "run"
    argv = ("--epochs=3", f"--train_dir={chief_dir}")
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
    assert _optimizer_steps(chief_dir) == STEPS_OF_EPOCHS[3]
    with open(chief_dir / "results.json") as handle:
        assert len(json.load(handle)["val_accuracy"]) == 3
