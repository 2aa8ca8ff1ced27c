"""sskd_tf.models: output and tap shapes, hand-counted sizes, the paper's FLOPs, weight
decay, a training step per network, names and flags, and --mode=summary."""
import copy
import functools
import pathlib
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import sskd_tf.data
from sskd_tf import models
from sskd_tf.modes import summary

NUM_CLASSES = 10
WEIGHT_DECAY = 5e-4
RESNET_TAPS = [(32, 32, 64), (16, 16, 128), (8, 8, 256)]
VGG_TAPS = [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]
MOBILENET_TAPS = [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)]
RESNEXT_TAPS = [(32, 32, 64), (32, 32, 64), (16, 16, 128), (8, 8, 256)]
TAPS = {
    "resnet8": RESNET_TAPS, "resnet32": RESNET_TAPS,
    "wrn16_4": RESNET_TAPS, "wrn40_4": RESNET_TAPS,
    "vgg_teacher": VGG_TAPS, "vgg_student": VGG_TAPS,
    "mobilenet_teacher": MOBILENET_TAPS, "mobilenet_student": MOBILENET_TAPS,
    "resnext_teacher": RESNEXT_TAPS, "resnext_student": RESNEXT_TAPS,
}

# The (layer class, weight name) pairs each family's authors decay.
CONV_KERNEL = (keras.layers.Conv2D, "kernel")
DEPTHWISE_KERNEL = (keras.layers.DepthwiseConv2D, "kernel")
DENSE_KERNEL = (keras.layers.Dense, "kernel")
DENSE_BIAS = (keras.layers.Dense, "bias")
BN_GAMMA_BETA = ((keras.layers.BatchNormalization, "gamma"),
                 (keras.layers.BatchNormalization, "beta"))
RESNET_DECAY = (CONV_KERNEL, DENSE_KERNEL, DENSE_BIAS, *BN_GAMMA_BETA)
DECAYED = {
    "resnet8": RESNET_DECAY, "wrn16_4": RESNET_DECAY,
    "vgg_student": (CONV_KERNEL, DENSE_KERNEL),
    "mobilenet_student": (CONV_KERNEL, DEPTHWISE_KERNEL, DENSE_KERNEL),
    "resnext_student": (CONV_KERNEL,),
}


@functools.cache
def decayed_model(name):
    return models.build_model(name, NUM_CLASSES, weight_decay=WEIGHT_DECAY)


def images(batch=2):
    return np.random.default_rng(0).normal(size=(batch, 32, 32, 3)).astype("float32")


@pytest.mark.parametrize("name", sorted(TAPS))
def test_output_and_tap_shapes(name):
    output = decayed_model(name)(images(), training=False)
    assert set(output) == {"logits", "features"}
    assert tuple(output["logits"].shape) == (2, NUM_CLASSES)
    assert [tuple(tap.shape) for tap in output["features"]] == [(2, *tap) for tap in TAPS[name]]


@pytest.mark.parametrize("name", sorted(TAPS))
def test_one_training_step_has_finite_loss(name):
    model = decayed_model(name)
    labels = np.array([1, 7])
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
    with tf.GradientTape() as tape:
        logits = model(images(), training=True)["logits"]
        cross_entropy = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                     from_logits=True)
        loss = tf.reduce_mean(cross_entropy) + tf.add_n(model.losses)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(gradients, model.trainable_variables)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(gradient)) for gradient in gradients)


def _basic_block_params(inputs, width):
    shortcut = inputs * width + 2 * width if inputs != width else 0
    return 9 * inputs * width + 2 * width + 9 * width * width + 2 * width + shortcut


def _resnet_params(blocks_per_stage, classes):
    stem = 9 * 3 * 32 + 2 * 32
    stages = 0
    for inputs, width in ((32, 64), (64, 128), (128, 256)):
        stages += _basic_block_params(inputs, width)
        stages += (blocks_per_stage - 1) * _basic_block_params(width, width)
    return stem + stages + 256 * classes + classes


def _vgg_params(widths, hidden_units, classes):
    convs = sum(9 * inputs * width + width for inputs, width in zip((3, *widths), widths))
    dense_sizes = (2 * 2 * 512, *hidden_units, classes)
    dense = sum(inputs * units + units for inputs, units in zip(dense_sizes, dense_sizes[1:]))
    return convs + dense


@pytest.mark.parametrize("name, expected", [
    ("resnet8", _resnet_params(1, 100)),
    ("resnet32", _resnet_params(5, 100)),
    ("vgg_teacher", _vgg_params((64, 64, 128, 128, 256, 256, 256, 512, 512, 512),
                                (1024, 1024), 100)),
    ("vgg_student", _vgg_params((64, 128, 256, 512), (1024,), 100)),
])
def test_parameter_count_equals_hand_count(name, expected):
    assert models.count_params(models.build_model(name, 100)) == expected


def test_resnet_moving_statistics_are_not_counted_as_parameters():
    model = models.build_model("resnet8", 100)
    batch_norm_channels = 32 + 3 * 64 + 3 * 128 + 3 * 256
    assert (models.count_params(model, include_non_trainable=True)
            == models.count_params(model) + 2 * batch_norm_channels)


@pytest.mark.parametrize("name, paper_flops, paper_params", [
    ("vgg_teacher", 576.3e6, 10.9e6),
    ("vgg_student", 121.3e6, 3.8e6),
])
def test_vgg_flops_and_params_match_the_paper_table(name, paper_flops, paper_params):
    model = models.build_model(name, 100)
    assert models.count_flops(model) == pytest.approx(paper_flops, rel=0.01)
    assert round(models.count_params(model) / 1e6, 1) == paper_params / 1e6


def test_flops_of_resnet8_equal_a_hand_count():
    def conv(size, kernel, inputs, width):
        return size * size * kernel * kernel * inputs * width

    multiply_adds = (conv(32, 3, 3, 32)
                     + conv(32, 3, 32, 64) + conv(32, 3, 64, 64) + conv(32, 1, 32, 64)
                     + conv(16, 3, 64, 128) + conv(16, 3, 128, 128) + conv(16, 1, 64, 128)
                     + conv(8, 3, 128, 256) + conv(8, 3, 256, 256) + conv(8, 1, 128, 256)
                     + 256 * 100)
    assert models.count_flops(models.build_model("resnet8", 100)) == 2 * multiply_adds


@pytest.mark.parametrize("name", sorted(DECAYED))
def test_weight_decay_covers_exactly_the_authors_variables(name):
    model = decayed_model(name)
    expected = sum(
        WEIGHT_DECAY / 2 * np.sum(np.square(keras.ops.convert_to_numpy(weight)))
        for layer in model.layers for weight in layer.trainable_weights
        if any(isinstance(layer, kind) and weight.name == weight_name
               for kind, weight_name in DECAYED[name]))
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_no_weight_decay_attaches_no_loss():
    assert models.build_model("mobilenet_student", NUM_CLASSES).losses == []


def test_logits_model_shares_layers_and_gives_the_same_logits():
    model = decayed_model("resnet8")
    exported = models.logits_model(model)
    np.testing.assert_allclose(exported(images(), training=False),
                               model(images(), training=False)["logits"], rtol=1e-6)
    assert exported.get_layer("logits") is model.get_layer("logits")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"resnet\{6n\+2\}.*vgg_teacher") as raised:
        models.build_model("resnet9", NUM_CLASSES)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("name, expected", [
    ("resnet110", ("resnet", {"blocks_per_stage": 18})),
    ("resnet14", ("resnet", {"blocks_per_stage": 2})),
    ("wrn28_10", ("wrn", {"blocks_per_stage": 4, "widen_factor": 10})),
    ("resnext_student", ("resnext", {"role": "student"})),
])
def test_parametric_names_are_parsed(name, expected):
    assert models.parse_model_name(name) == expected


@pytest.mark.parametrize("name", ["resnet2", "resnet33", "resnet08", "wrn41_4", "wrn16_0",
                                  "vgg", "VGG_teacher", ""])
def test_invalid_names_are_rejected(name):
    assert not models.is_model_name(name)


@pytest.mark.parametrize("teacher, student", [
    ("resnet32", "resnet8"), ("resnet110", "resnet8"), ("wrn40_4", "wrn16_4"),
    ("vgg_teacher", "vgg_student"), ("mobilenet_teacher", "mobilenet_student"),
    ("resnext_teacher", "resnext_student"),
])
def test_student_for(teacher, student):
    assert models.student_for(teacher) == student


def test_model_names_import_without_tensorflow():
    code = ("import sys, sskd_tf.models, sskd_tf.models.names; "
            "sskd_tf.models.parse_model_name('resnet32'); "
            "print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_bad_model_flags_fail_at_parsing_with_the_choices():
    from absl import flags as absl_flags

    import flags  # noqa: F401  (defines the project's flags)

    for argument in ("--teacher=resnet9", "--student=vgg"):
        flag_values = copy.deepcopy(absl_flags.FLAGS)
        with pytest.raises(absl_flags.IllegalFlagValueError, match=r"resnet\{6n\+2\}"):
            flag_values(["main.py", argument])
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", "--teacher=wrn40_4"])
    assert (flag_values.teacher, flag_values.student) == ("wrn40_4", "")


def test_summary_prints_both_models(monkeypatch, capsys):
    monkeypatch.setattr(sskd_tf.data, "get_dataset_info",
                        lambda name: types.SimpleNamespace(num_classes=100,
                                                           image_shape=(32, 32, 3)))
    summary.run(types.SimpleNamespace(teacher="vgg_teacher", student="", dataset="cifar100"))
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    assert rows["model"] == ["vgg_teacher", "vgg_student"]
    assert rows["FLOPs"] == ["576.3M", "121.2M", "4.76x"]
    assert rows["params"] == ["10.89M", "3.75M", "2.90x"]
    taps = [line.split()[2:] for line in lines if line.startswith("tap ")]
    assert taps == [[shape, shape] for shape in ("16x16x64", "8x8x128", "4x4x256", "2x2x512")]


def test_main_summary_mode_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, "main.py", "--mode=summary", "--teacher=mobilenet_teacher"],
        capture_output=True, text=True, check=True,
        cwd=str(pathlib.Path(__file__).resolve().parents[1]))
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert rows["model"] == ["mobilenet_teacher", "mobilenet_student"]
    assert rows["FLOPs"] == ["46.0M", "19.8M", "2.33x"]
