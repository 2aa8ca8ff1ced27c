"""Export of a finished run's student to LiteRT, measured against the Keras model.

Writes train_dir/export/ in one piece (built in a temporary directory, then renamed):
  float32.tflite, float16.tflite, int8.tflite   the student's logits, no taps
  report.md, report.json                        size, top-1 accuracy and agreement with
                                                the Keras model on the validation split,
                                                latency per image at batch 1
The data are the run's own: the representative set of the int8 model is drawn from its
training split (normalised, not augmented), the evaluation uses its validation split,
both as the run's settings (train_dir/run.json) sliced them.
"""
import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from sskd_tf import data as datasets
from sskd_tf import models
from sskd_tf.data.catalog import source_of
from sskd_tf.data.pipeline import normalization, resize
from sskd_tf.data.recipes import normalize
from sskd_tf.errors import UserError
from sskd_tf.export import interpreter, report
from sskd_tf.export.formats import FORMATS, convert
from sskd_tf.training import files, identity
from sskd_tf.training.config import RESULTS_FILE

EXPORT_DIR = "export"
KERAS_FILE = "student.keras"
SAVED_MODEL_DIR = "student_export"


@dataclasses.dataclass
class ExportOptions:
    """representative_samples: training images that calibrate the int8 model.
    latency_runs: batch-1 runs whose median is the latency. int8_max_accuracy_drop:
    percentage points of top-1 accuracy int8 may lose against float32 before the report
    warns. threads: interpreter threads. data_dir: where the run's dataset is now (None:
    where the run read it)."""

    representative_samples: int = 200
    latency_runs: int = 100
    int8_max_accuracy_drop: float = 1.0
    threads: int = 1
    data_dir: str = None
    verbose: int = 1


def finished_run(train_dir):
    """(results, settings) of the finished run in train_dir (settings: its run.json's
    identity and resumable settings); a UserError when there is none or its files cannot
    be read."""
    if not os.path.isdir(train_dir):
        raise UserError(f"--train_dir {train_dir!r}: no such directory")
    results_path = os.path.join(train_dir, RESULTS_FILE)
    if not os.path.exists(results_path):
        raise UserError(f"{train_dir} holds no finished run (no {RESULTS_FILE}); "
                        "train one there first, or point --train_dir at a finished run")
    results = files.read_json(results_path, "the results of a finished run")
    record = identity.read_record(train_dir)
    if not isinstance(results, dict) or record is None:
        raise UserError(f"{train_dir} holds a damaged run: no {identity.RUN_FILE} "
                        f"or no results in {RESULTS_FILE}")
    return results, {**record.get("resumable", {}), **record["identity"]}


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_student(train_dir):
    """The Keras logits model of the run's student.keras."""
    path = os.path.join(train_dir, KERAS_FILE)
    try:
        return models.logits_model(keras.saving.load_model(path, compile=False))
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot read {path}: {_first_line(error)}") from None


def run_data(settings, options):
    """(representative images, validation images, validation labels) of the run, images
    resized to the run's --image_size and normalised as its evaluation pipeline does (its
    recipe's constants, or its training split's statistics)."""
    data_dir = options.data_dir or settings.get("data_dir")
    name = settings["dataset"]
    train_images, _, test_images, test_labels = datasets.load_arrays(name, data_dir)
    image_size = settings.get("image_size")
    train_images, test_images = resize(train_images, image_size), resize(test_images, image_size)
    mean, std = normalization(source_of(name), name, data_dir, train_images, settings["recipe"])
    train_images = train_images[:settings.get("take_train")]
    chosen = np.random.default_rng(settings.get("seed", 0)).choice(
        len(train_images), min(options.representative_samples, len(train_images)), replace=False)
    test_slice = slice(None, settings.get("take_test"))
    return (normalize(train_images[np.sort(chosen)], mean, std).numpy(),
            normalize(test_images[test_slice], mean, std).numpy(), test_labels[test_slice])


def keras_logits(model, images, batch_size=interpreter.EVAL_BATCH):
    predict = tf.function(lambda batch: model(batch, training=False), autograph=False)
    return np.concatenate([predict(tf.constant(images[start:start + batch_size])).numpy()
                           for start in range(0, len(images), batch_size)])


def keras_latency_ms(model, images, runs):
    """Median milliseconds of the Keras model (a traced tf.function) on one image."""
    predict = tf.function(lambda batch: model(batch, training=False), autograph=False)
    inputs = [tf.constant(images[k % len(images)][None]) for k in range(runs)]
    return interpreter.median_ms(lambda image: predict(image).numpy(), inputs)


def measure(name, file, size_bytes, logits, reference, labels, latency):
    """One row of the report; `file` relative to the run directory."""
    return {
        "format": name,
        "file": file,
        "size_bytes": size_bytes,
        "accuracy": float(np.mean(logits.argmax(-1) == labels)),
        "agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
        "max_abs_logit_difference": float(np.max(np.abs(logits - reference))),
        "latency_ms": latency,
    }


def export_run(train_dir, options=None):
    """Convert the student of the finished run in train_dir to every LiteRT format,
    evaluate each and write train_dir/export/, holding the directory's lock; returns the
    report (a dict)."""
    options = options or ExportOptions()
    results, settings = finished_run(train_dir)
    with files.run_lock(train_dir):
        return _export(train_dir, options, results, settings)


def _export(train_dir, options, results, settings):
    saved_model = os.path.join(train_dir, SAVED_MODEL_DIR)
    if not os.path.isdir(saved_model):
        raise UserError(f"{train_dir} holds a damaged run: no {SAVED_MODEL_DIR}/")
    student = load_student(train_dir)
    representative, images, labels = run_data(settings, options)
    reference = keras_logits(student, images)
    rows = [measure("keras", KERAS_FILE, os.path.getsize(os.path.join(train_dir, KERAS_FILE)),
                    reference, reference, labels,
                    keras_latency_ms(student, images, options.latency_runs))]
    temporary = tempfile.mkdtemp(dir=train_dir, prefix=".export-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)
    try:
        for name in FORMATS:
            if options.verbose:
                print(f"Converting {train_dir} to LiteRT {name}", flush=True)
            content = convert(saved_model, name, representative)
            with open(os.path.join(temporary, f"{name}.tflite"), "wb") as handle:
                handle.write(content)
            model = interpreter.load_interpreter(content, options.threads)
            rows.append(measure(name, f"{EXPORT_DIR}/{name}.tflite", len(content),
                                interpreter.logits(model, images), reference, labels,
                                interpreter.latency_ms(model, images, options.latency_runs)))
        payload = report.build(train_dir, results, settings, options, rows,
                               num_validation=len(labels), num_representative=len(representative))
        if payload["int8_accuracy_drop_exceeded"]:
            logging.warning(report.int8_warning(payload))
        files.write_json(os.path.join(temporary, "report.json"), payload)
        with open(os.path.join(temporary, "report.md"), "w") as handle:
            handle.write(report.markdown(payload))
        _replace_directory(temporary, os.path.join(train_dir, EXPORT_DIR))
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return payload


def _replace_directory(temporary, final):
    """Rename `temporary` to `final`, replacing an earlier `final` only once the new one
    is complete."""
    previous = None
    if os.path.exists(final):
        previous = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=".export-old-")
        os.replace(final, os.path.join(previous, EXPORT_DIR))
    os.replace(temporary, final)
    if previous:
        shutil.rmtree(previous)
