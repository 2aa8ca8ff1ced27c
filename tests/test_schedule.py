"""The epoch cuts of training/schedule.py against transcriptions of the authors' loops
(KD_methods_with_TF train_w_distill.py, SSKD_SVD train.py), and the full-batch stream that
feeds them."""
import math

import numpy as np
import pytest
import tensorflow as tf

from sskd_tf.data.pipeline import full_batch_stream
from sskd_tf.training.loop import current_epoch
from sskd_tf.training.schedule import EpochCut, learning_rate_schedule


def kd_methods_loop(num_train, batch, epochs, init_epochs=0, learning_rate=0.1,
                    decay_points=(0.3, 0.6, 0.8)):
    """train_w_distill.py, step by step: the epoch and learning rate each step trains with
    (the global step before the step), and after how many steps it validates."""
    total_epochs = init_epochs + epochs
    max_steps = int(num_train * total_epochs) // batch + 1
    epochs_of, rates, validated, done = [], [], [], 0
    for step in range(max_steps):
        epoch = math.floor(step * batch / num_train)
        rate = learning_rate
        for point in decay_points:
            if epoch >= init_epochs + int(epochs * point):
                rate *= 0.1
        epochs_of.append(epoch)
        rates.append(rate)
        if ((step + 1) * batch) // num_train >= init_epochs + done:
            validated.append(step + 1)
            done += 1
    return np.array(epochs_of), np.array(rates), validated


def eccv_loop(num_train, batch, epochs):
    """SSKD_SVD train.py: epoch floor(step / int(N / B)), int(N / B * E) steps, the
    learning rate a tf.case of 1e-2, 1e-3 and (default) 1e-4 before epochs 100, 150."""
    per_epoch = int(num_train / batch)
    max_steps = int(num_train / batch * epochs)
    epochs_of = np.arange(max_steps) // per_epoch
    rates = np.where(epochs_of < 100, 1e-2, np.where(epochs_of < 150, 1e-3, 1e-4))
    return epochs_of, rates


def _cut_epochs(cut, steps):
    return np.asarray(cut.epoch_of(tf.range(steps, dtype=tf.int64)), dtype=np.int64)


@pytest.mark.parametrize("num_train, batch, epochs, init_epochs", [
    (50_000, 128, 100, 0), (50_000, 128, 100, 40), (128, 64, 3, 0), (80, 32, 2, 1)])
def test_the_kd_methods_cut_is_the_authors_loop(num_train, batch, epochs, init_epochs):
    cut = EpochCut("kd_methods", num_train, batch)
    total_epochs = init_epochs + epochs
    expected_epochs, expected_rates, validated = kd_methods_loop(num_train, batch, epochs,
                                                                 init_epochs)
    assert cut.total_steps(total_epochs) == len(expected_epochs)
    np.testing.assert_array_equal(_cut_epochs(cut, len(expected_epochs)), expected_epochs)
    schedule = learning_rate_schedule(0.1, (0.3, 0.6, 0.8), 0.1, epochs, cut, init_epochs)
    rates = np.asarray(schedule(tf.range(len(expected_epochs), dtype=tf.int64)))
    np.testing.assert_allclose(rates, expected_rates, rtol=1e-6)
    # The port validates at the end of every epoch. The authors validate after the first
    # step (a number the port leaves out) and at every epoch boundary from the end of the
    # initialisation stage on; a run of a whole number of epochs trains one step past the
    # last boundary, which the port trains in its last epoch, validating after it.
    ours = {cut.last_step(epoch, total_epochs)
            for epoch in range(max(init_epochs - 1, 0), total_epochs)}
    last = cut.total_steps(total_epochs)
    authors = set(validated) - {1}
    assert authors - ours <= {last - 1} and ours - authors <= {last}
    assert sum(cut.steps_in(epoch, total_epochs) for epoch in range(total_epochs)) == len(
        expected_epochs)


def test_the_kd_methods_cut_on_cifar_counts_the_authors_steps():
    cut = EpochCut("kd_methods", 50_000, 128)
    assert cut.total_steps(100) == 39_063
    # N / B = 390.625 = 390 + 5/8: every 8 epochs are 3,125 steps, 5 of 391 and 3 of 390.
    assert [cut.steps_in(epoch, 100) for epoch in range(8)] == [391, 391, 390, 391, 391, 390,
                                                                 391, 390]
    assert cut.first_step(30) == 11_719  # the first decay: 11,719 steps in, not 30 * 391
    assert cut.total_steps(140) == 54_688


def test_the_eccv2018_cut_is_its_loop():
    cut = EpochCut("eccv2018", 50_000, 128)
    expected_epochs, expected_rates = eccv_loop(50_000, 128, 200)
    assert cut.total_steps(200) == len(expected_epochs) == 78_125
    np.testing.assert_array_equal(_cut_epochs(cut, len(expected_epochs)), expected_epochs)
    schedule = learning_rate_schedule(0.01, (0.5, 0.75), 0.1, 200, cut)
    rates = np.asarray(schedule(tf.range(len(expected_epochs), dtype=tf.int64)))
    np.testing.assert_allclose(rates, expected_rates, rtol=1e-5)
    assert cut.steps_in(0, 200) == 390 and cut.steps_in(199, 200) == 390 + 125


def test_the_pass_cut_is_one_pass_an_epoch():
    cut = EpochCut("pass", 300, 128)
    assert [cut.steps_in(epoch, 3) for epoch in range(3)] == [3, 3, 3]
    np.testing.assert_array_equal(_cut_epochs(cut, 9), [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert not cut.full_batches and EpochCut("kd_methods", 300, 128).full_batches


def test_a_resumed_step_falls_in_its_epoch():
    cut = EpochCut("kd_methods", 128, 64)  # epochs of 2, 2, then 3 steps (the last one extra)
    assert [current_epoch(cut, step, 3) for step in range(7)] == [0, 0, 1, 1, 2, 2, 2]


def test_full_batches_run_across_the_passes():
    """Batch i holds the examples at positions [iB, (i+1)B) of the passes laid end to end;
    each pass visits every example once; a stream started at step s is the tail."""
    count, batch = 10, 4
    images = np.arange(count, dtype=np.uint8).reshape(count, 1, 1, 1).repeat(3, axis=3)
    labels = np.arange(count, dtype=np.int64)

    def keep(images, seed):
        return images

    stream = full_batch_stream(images, labels, batch, keep, seed=3, mean=0.0, std=1.0)
    drawn = [labels for _, labels in stream.take(10).as_numpy_iterator()]
    assert all(len(labels) == batch for labels in drawn)
    flow = np.concatenate(drawn)
    for start in range(0, 40, count):
        assert sorted(flow[start:start + count]) == list(range(count))
    assert not np.array_equal(flow[:count], flow[count:2 * count])
    resumed = full_batch_stream(images, labels, batch, keep, seed=3, mean=0.0, std=1.0,
                                start_step=3)
    for (_, replayed), expected in zip(resumed.take(4).as_numpy_iterator(), drawn[3:7]):
        np.testing.assert_array_equal(replayed, expected)


def repdistiller_loop(num_train=50_000, batch=64, epochs=240, learning_rate=0.05,
                      decay_epochs=(150, 180, 210)):
    """train_student.py: for epoch in 1..240, adjust_learning_rate (lr x 0.1 ** the number of
    decay epochs below the epoch), then one DataLoader pass of ceil(N / B) batches."""
    steps = math.ceil(num_train / batch)
    rates = []
    for epoch in range(1, epochs + 1):
        rates += [learning_rate * 0.1 ** np.sum(epoch > np.asarray(decay_epochs))] * steps
    return np.array(rates), steps


def test_the_crd2020_schedule_is_repdistillers_loop():
    from sskd_tf.training.recipes import RECIPES

    recipe = RECIPES.get("crd2020")
    cut = EpochCut(recipe.epoch_cut, 50_000, recipe.batch_size)
    expected, steps_per_epoch = repdistiller_loop()
    assert steps_per_epoch == 782 and cut.total_steps(recipe.epochs) == len(expected) == 187_680
    schedule = learning_rate_schedule(recipe.learning_rate, recipe.lr_decay_points,
                                      recipe.lr_decay_rate, recipe.epochs, cut)
    rates = np.asarray(schedule(tf.range(len(expected), dtype=tf.int64)))
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert [int(np.argmax(rates < 0.05 * 0.1 ** i * 0.5)) for i in range(3)] == [
        150 * 782, 180 * 782, 210 * 782]


def _resolved(**fields):
    from sskd_tf.training.config import RunConfig

    return RunConfig(recipe="crd2020", teacher="crd:resnet32x4", **fields).resolved()


def test_crd2020_trains_mobilenetv2_and_the_shufflenets_at_0_01():
    """train_student.py: opt.learning_rate = 0.01 for MobileNetV2, ShuffleV1, ShuffleV2."""
    rates = {student: _resolved(student=f"crd:{student}").learning_rate
             for student in ("resnet8x4", "MobileNetV2", "ShuffleV1", "ShuffleV2", "vgg8")}
    assert rates == {"resnet8x4": 0.05, "MobileNetV2": 0.01, "ShuffleV1": 0.01,
                     "ShuffleV2": 0.01, "vgg8": 0.05}
    assert _resolved(student="crd:ShuffleV1", learning_rate=0.2).learning_rate == 0.2
    config = _resolved()
    assert (config.student, config.batch_size, config.epochs, config.weight_decay,
            config.epoch_cut) == ("crd:resnet8x4", 64, 240, 5e-4, "pass")


def test_a_teacher_trained_by_crd2020_takes_its_own_learning_rate():
    """train_teacher.py trains resnet32x4 at 0.05 whatever the student; a rate set by hand
    is the run's, teacher included."""
    from sskd_tf.training.run import teacher_run_config

    teacher = teacher_run_config(_resolved(student="crd:ShuffleV1", train_dir="run"))
    assert (teacher.student, teacher.learning_rate) == ("crd:resnet32x4", 0.05)
    teacher = teacher_run_config(_resolved(student="crd:ShuffleV1", learning_rate=0.02,
                                           train_dir="run"))
    assert teacher.learning_rate == 0.02
