"""Writing a run's outputs so that a failure never leaves a half-written file:
everything goes to a temporary name in the same directory, then is renamed. A
write that fails because the disk is full or the directory is not writable is
the user's to fix (`UserError`); what it left behind is removed first."""
import contextlib
import errno
import fcntl
import glob
import json
import os
import shutil
import tempfile

import tensorflow as tf

from sskd_tf import models
from sskd_tf.errors import UserError

# Errors of the file system that the user fixes (space, quota, permissions), not us.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
               errno.EIO)


def disk_problem(error):
    """The file-system reason (e.g. "No space left on device") of an OSError or a
    TensorFlow I/O error, or None when `error` is something else."""
    if isinstance(error, OSError):
        return error.strerror if error.errno in DISK_ERRNOS else None
    if isinstance(error, tf.errors.OpError):
        return next((os.strerror(code) for code in DISK_ERRNOS
                     if os.strerror(code) in error.message), None)
    return None


@contextlib.contextmanager
def writing(what, directory):
    """Run a write of `what` into `directory`; on a file-system failure, remove
    every entry the write added to `directory` and raise a one-line UserError."""
    before = set(os.listdir(directory)) if os.path.isdir(directory) else set()
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        reason = disk_problem(error)
        if reason is None:
            raise
        if os.path.isdir(directory):
            for entry in set(os.listdir(directory)) - before:
                _remove(os.path.join(directory, entry))
        raise UserError(f"cannot write {what} in {directory}: {reason}; free some space (or fix "
                        "its permissions) and run the same command again: it resumes from the "
                        "last complete checkpoint") from None


def ensure_writable_dir(path, flag="--train_dir"):
    """Create directory `path` if needed and check that a file can be written in it."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f"{flag}={path} is not a writable directory ({error.strerror}); "
                        f"choose another {flag}") from None


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def write_atomically(path, write, binary=False):
    """Call `write(handle)` on a temporary file beside `path` (opened for text, or bytes),
    then rename it to `path`: readers see the old file or the whole new one, never a part."""
    directory = os.path.dirname(path) or "."
    text = {} if binary else {"newline": ""}
    with tempfile.NamedTemporaryFile("wb" if binary else "w", dir=directory, suffix=".tmp",
                                     delete=False, **text) as handle:
        try:
            write(handle)
        except BaseException:
            handle.close()
            os.remove(handle.name)
            raise
    os.replace(handle.name, path)


def write_json(path, payload):
    """Atomically write `payload` as JSON to `path`."""
    write_atomically(path, lambda handle: json.dump(payload, handle, indent=2))


def write_text(path, text):
    """Atomically write the string `text` to `path`."""
    write_atomically(path, lambda handle: handle.write(text))


def read_json(path, what):
    """The JSON content of `path`; a one-line UserError naming `what` it should hold
    when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else f"not valid JSON: {error}"
        raise UserError(f"cannot read {what} from {path} ({reason}); pass --overwrite to "
                        "start over or choose another --train_dir") from None


LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(train_dir):
    """Hold an exclusive lock on `train_dir` while the block runs: a second process that
    asks for it is refused at once (UserError) with the holder's pid. The lock is the
    operating system's (flock on train_dir/.lock), so it goes away with the process that
    holds it, even when that process is killed; the file itself stays."""
    ensure_writable_dir(train_dir)
    path = os.path.join(train_dir, LOCK_FILE)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip()
            raise UserError(f"{train_dir} is in use by another run ({holder or 'a process'}); "
                            "wait for it to end, or choose another --train_dir") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(descriptor)


def _replace_path(temporary, final):
    if os.path.isdir(final):
        shutil.rmtree(final)
    os.replace(temporary, final)


def save_student(student, train_dir):
    """student.keras (with taps) and student_export/ (SavedModel of the logits only)."""
    temporary = tempfile.mkdtemp(dir=train_dir, prefix=".saving-")
    try:
        keras_file = os.path.join(temporary, "student.keras")
        student.save(keras_file)
        export_dir = os.path.join(temporary, "student_export")
        models.logits_model(student).export(export_dir, verbose=False)
        _replace_path(keras_file, os.path.join(train_dir, "student.keras"))
        _replace_path(export_dir, os.path.join(train_dir, "student_export"))
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def remove_leftovers(train_dir):
    """Remove what a run killed while writing left behind: the temporary files of
    `write_json` and `save_student`, and a checkpoint whose save had not finished
    (TensorFlow writes it under `<prefix>_temp/` and renames it when complete)."""
    patterns = [os.path.join(train_dir, ".saving-*"), os.path.join(train_dir, "tmp*.tmp"),
                os.path.join(train_dir, "checkpoints", "*_temp")]
    for pattern in patterns:
        for path in glob.glob(pattern):
            _remove(path)


def clear_run(train_dir, keep=()):
    """Remove what a previous run wrote in train_dir (for --overwrite), but the entries
    named in `keep` and the lock file (held by this run)."""
    if not os.path.isdir(train_dir):
        return
    for entry in os.listdir(train_dir):
        if entry not in keep and entry != LOCK_FILE:
            _remove(os.path.join(train_dir, entry))
