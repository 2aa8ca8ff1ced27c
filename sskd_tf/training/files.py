"""Writing a run's outputs so that a failure never leaves a half-written file:
everything goes to a temporary name in the same directory, then is renamed."""
import json
import os
import shutil
import tempfile

from sskd_tf import models


def write_json(path, payload):
    """Atomically write `payload` as JSON to `path`."""
    directory = os.path.dirname(path) or "."
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as handle:
        try:
            json.dump(payload, handle, indent=2)
        except BaseException:
            handle.close()
            os.remove(handle.name)
            raise
    os.replace(handle.name, path)


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


def clear_run(train_dir):
    """Remove what a previous run wrote in train_dir (for --overwrite); a cached
    teacher in train_dir/teacher is kept."""
    if not os.path.isdir(train_dir):
        return
    for entry in os.listdir(train_dir):
        if entry == "teacher":
            continue
        path = os.path.join(train_dir, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
