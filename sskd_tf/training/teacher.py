"""The teacher of a run: its weights (a Keras file, the authors' .mat, or a teacher
cached in train_dir/teacher/ by an earlier run: training/run.py), checked against the
network they are loaded into, and its validation accuracy."""
import os
import zipfile

import keras
import tensorflow as tf

from sskd_tf import models
from sskd_tf.errors import UserError
from sskd_tf.models import keras_files
from sskd_tf.models.mat_weights import load_mat_weights
from sskd_tf.training.config import log


def evaluate_accuracy(model, val_ds):
    """Top-1 accuracy of a {"logits", "features"} model on a dataset."""
    accuracy = keras.metrics.SparseCategoricalAccuracy()

    @tf.function(autograph=False)
    def logits_of(images):
        return model(images, training=False)["logits"]

    for images, labels in val_ds:
        accuracy.update_state(labels, logits_of(images))
    return float(accuracy.result())


def weight_mismatches(model, source):
    """Differences between the weights of two models, by name and shape (first few)."""
    expected = {w.path: tuple(w.shape) for w in model.weights}
    found = {w.path: tuple(w.shape) for w in source.weights}
    problems = [f"{name} missing" for name in expected if name not in found]
    problems += [f"{name} unexpected" for name in found if name not in expected]
    problems += [f"{name} {found[name]} instead of {shape}" for name, shape in expected.items()
                 if name in found and found[name] != shape]
    return problems[:3]


def load_teacher_weights(teacher, path):
    """Weights from a Keras file (.keras / .weights.h5) or the authors' .mat; a file
    of another architecture is refused before any weight is assigned, and a Keras file
    that cannot be read is refused saying why. A .keras file is read in Keras' safe
    mode: one holding code (a Lambda layer) or classes this project does not define is
    refused, and nothing in it runs."""
    if not os.path.exists(path):
        raise UserError(f"--teacher_weights: no such file {path!r}")
    if path.endswith(".mat"):
        family, _ = models.parse_model_name(teacher.name)
        load_mat_weights(teacher, path, family)
    elif path.endswith(".keras"):
        keras_files.check_readable(path, "--teacher_weights")
        try:
            saved = keras.saving.load_model(path, compile=False, safe_mode=True)
        except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
            raise UserError(f"--teacher_weights: cannot read {path!r}: {str(error).splitlines()[0]}") from None
        problems = weight_mismatches(teacher, saved)
        if problems:
            raise UserError(f"--teacher_weights {path!r} does not fit {teacher.name}: {'; '.join(problems)}")
        teacher.set_weights(saved.get_weights())
    elif path.endswith(".weights.h5"):
        keras_files.check_readable(path, "--teacher_weights")
        mismatch = keras_files.weights_h5_mismatch(teacher, path, "--teacher_weights")
        if mismatch:
            raise UserError(f"--teacher_weights {path!r} does not fit {teacher.name}: {mismatch}")
        try:
            teacher.load_weights(path)
        except (ValueError, OSError) as error:
            raise UserError(f"--teacher_weights {path!r} does not fit {teacher.name}: "
                             f"{str(error).splitlines()[0]}") from None
    else:
        raise UserError(f"--teacher_weights {path!r}: expected a .keras, .weights.h5 or .mat file")


def load_teacher(config, num_classes, weights_path, val_ds, image_shape=(32, 32, 3)):
    """The frozen teacher with its weights, and its validation accuracy."""
    teacher = models.build_model(config.teacher, num_classes, image_shape,
                                 taps=config.teacher_taps, role="teacher",
                                 keras_batch_norm=config.keras_batch_norm)
    if weights_path:
        load_teacher_weights(teacher, weights_path)
    accuracy = evaluate_accuracy(teacher, val_ds)
    log(config, f"Teacher {config.teacher}: validation accuracy {accuracy:.4f}")
    return teacher, accuracy


def fresh_teacher(config, num_classes, image_shape=(32, 32, 3)):
    """The teacher network from its initialisation, with the run's weight decay, for a
    method that trains it alongside the student (`pretrained_teacher` False)."""
    return models.build_model(config.teacher, num_classes, image_shape,
                              weight_decay=config.weight_decay, taps=config.teacher_taps,
                              role="teacher", keras_batch_norm=config.keras_batch_norm)


def run_teacher(config, method_class, num_classes, weights_path, val_ds, image_shape):
    """(teacher, its validation accuracy) of a run of `method_class`: the trained teacher,
    one from its initialisation (accuracy None) for a method that trains it, or
    (None, None) for a method without one."""
    if not method_class.needs_teacher:
        return None, None
    if not method_class.pretrained_teacher:
        return fresh_teacher(config, num_classes, image_shape), None
    return load_teacher(config, num_classes, weights_path, val_ds, image_shape)
