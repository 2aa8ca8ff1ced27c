"""`--strategy=multi_worker` (MultiWorkerMirroredStrategy from TF_CONFIG): every worker
runs the same program and takes part in every step; only the chief writes to
--train_dir. Every other worker writes its checkpoints, logs and results (which
checkpoint saving needs from all workers) to a temporary copy of the chief's run
directory, removed at the end. --train_dir must be on a file system every worker
reads (the same path on localhost)."""
import contextlib
import json
import os
import shutil
import tempfile

import tensorflow as tf

from sskd_tf.errors import UserError, WorkerLost

# What a worker copies from the chief's run directory to resume as the chief does.
RESUME_ENTRIES = ("run.json", "checkpoints", "teacher", "history.csv", "results.json")
# What TensorFlow raises on the surviving workers when another worker is gone.
PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError,
                 tf.errors.DeadlineExceededError, tf.errors.CancelledError)


def cluster_task():
    """(task type, task index, cluster) of TF_CONFIG; a malformed TF_CONFIG is a UserError."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = config.get("task", {})
        return task.get("type"), int(task.get("index", 0)), config.get("cluster", {})
    except (ValueError, TypeError, AttributeError) as error:
        raise UserError(f"TF_CONFIG is not valid JSON with a task and a cluster: {error}") from None


def is_chief():
    """True for the chief: the `chief` task, else worker 0 (or no cluster at all)."""
    kind, index, cluster = cluster_task()
    if kind in (None, "chief"):
        return True
    return kind == "worker" and index == 0 and "chief" not in cluster


@contextlib.contextmanager
def scratch_run_dir(train_dir, overwrite):
    """A temporary directory holding what this worker needs of the chief's `train_dir`
    to resume as it does (nothing with --overwrite but the cached teacher); removed
    on exit."""
    scratch = tempfile.mkdtemp(prefix="sskd_tf-worker-")
    try:
        for entry in RESUME_ENTRIES:
            source = os.path.join(train_dir, entry)
            if overwrite and entry != "teacher" or not os.path.exists(source):
                continue
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(scratch, entry))
            else:
                shutil.copy2(source, os.path.join(scratch, entry))
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def lost_workers_reported():
    """A collective that fails because another worker stopped becomes WorkerLost."""
    try:
        yield
    except PEER_FAILURES as error:
        reason = " ".join(error.message.split())[:160]
        raise WorkerLost(
            f"another worker of --strategy=multi_worker stopped ({type(error).__name__}: "
            f"{reason}); start every worker again with the same command: they resume from "
            "the last checkpoint") from None
