"""RepDistiller's networks (`crd:`, sskd_tf/models/crd/): parameter counts against counts of
the PyTorch definitions, tap shapes and activation states, PyTorch's padding, grouping,
pooling, shuffling and initialisers against numpy, weight decay, names, and traced training
steps of the Distiller."""
import functools
import math
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import sskd_tf.data
from sskd_tf import models
from sskd_tf.distill import build_method
from sskd_tf.errors import UserError
from sskd_tf.models.crd import NETWORKS, layers
from sskd_tf.modes import summary
from sskd_tf.losses import loss_of
from sskd_tf.training.distiller import Distiller
from sskd_tf.training.optimizers import TF1Momentum

CLASSES = 100
WEIGHT_DECAY = 5e-4

# PyTorch's parameter counts (trainable; no BN running statistics), from RepDistiller
# models/*.py at commit b84f547, counted with the functions below: Conv2d out * in / groups *
# k * k (+ out with a bias), BatchNorm2d 2c, Linear in * out + out. resnet56, wrn_40_2, vgg13,
# resnet8x4 and resnet32x4 are also the numbers of the spec (shared/spec/kd-methods.md B).
REPDISTILLER_PARAMS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756,
    "resnet44": 667_188, "resnet56": 861_620, "resnet110": 1_736_564,
    "resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "ResNet50": 23_705_252,
    "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780, "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "MobileNetV2": 812_836, "ShuffleV1": 949_258, "ShuffleV2": 1_355_528,
}


def _conv(inputs, outputs, kernel, groups=1, bias=False):
    return outputs * (inputs // groups) * kernel * kernel + (outputs if bias else 0)


def _bn(channels):
    return 2 * channels


def _linear(inputs, outputs):
    return inputs * outputs + outputs


def _cifar_resnet(depth, widths):
    total, inputs = _conv(3, widths[0], 3) + _bn(widths[0]), widths[0]
    for width, stride in zip(widths[1:], (1, 2, 2)):
        for block in range((depth - 2) // 6):
            total += 2 * _bn(width) + _conv(inputs, width, 3) + _conv(width, width, 3)
            if (block == 0 and stride != 1) or inputs != width:
                total += _conv(inputs, width, 1) + _bn(width)
            inputs = width
    return total + _linear(widths[3], CLASSES)


def _resnet50():
    total, inputs = _conv(3, 64, 3) + _bn(64), 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for _ in range(blocks):
            total += (_conv(inputs, width, 1) + _conv(width, width, 3) + _conv(width, 4 * width, 1)
                      + 2 * _bn(width) + _bn(4 * width))
            if inputs != 4 * width:  # every first block: width or stride changes
                total += _conv(inputs, 4 * width, 1) + _bn(4 * width)
            inputs = 4 * width
    return total + _linear(2048, CLASSES)


def _wrn(depth, widen):
    total, inputs = _conv(3, 16, 3), 16
    for width in (16 * widen, 32 * widen, 64 * widen):
        for _ in range((depth - 4) // 6):
            total += _bn(inputs) + _conv(inputs, width, 3) + _bn(width) + _conv(width, width, 3)
            total += _conv(inputs, width, 1) if inputs != width else 0
            inputs = width
    return total + _bn(inputs) + _linear(inputs, CLASSES)


def _vgg(blocks):
    total, inputs = 0, 3
    for width in (width for block in blocks for width in block):
        total, inputs = total + _conv(inputs, width, 3, bias=True) + _bn(width), width
    return total + _linear(512, CLASSES)


def _mobile_half():
    total, inputs = _conv(3, 16, 3) + _bn(16), 16
    for expansion, width, blocks in ((1, 8, 1), (6, 12, 2), (6, 16, 3), (6, 32, 4), (6, 48, 3),
                                     (6, 80, 3), (6, 160, 1)):
        for _ in range(blocks):
            hidden = inputs * expansion
            total += (_conv(inputs, hidden, 1) + _conv(hidden, hidden, 3, hidden)
                      + _conv(hidden, width, 1) + 2 * _bn(hidden) + _bn(width))
            inputs = width
    return total + _conv(inputs, 1280, 1) + _bn(1280) + _linear(1280, CLASSES)


def _shufflev1():
    total, inputs = _conv(3, 24, 1) + _bn(24), 24
    for width, blocks in ((240, 4), (480, 8), (960, 4)):
        for block in range(blocks):
            out = width - (inputs if block == 0 else 0)
            mid, groups = out // 4, 1 if inputs == 24 else 3
            total += (_conv(inputs, mid, 1, groups) + _conv(mid, mid, 3, mid)
                      + _conv(mid, out, 1, 3) + 2 * _bn(mid) + _bn(out))
            inputs = width
    return total + _linear(960, CLASSES)


def _shufflev2():
    total, inputs = _conv(3, 24, 1) + _bn(24), 24
    for width, blocks in ((116, 3), (232, 7), (464, 3)):
        mid = width // 2
        total += _conv(inputs, inputs, 3, inputs) + _bn(inputs) + _conv(inputs, mid, 1) + _bn(mid)
        total += _conv(inputs, mid, 1) + _conv(mid, mid, 3, mid) + _conv(mid, mid, 1) + 3 * _bn(mid)
        total += blocks * (2 * _conv(mid, mid, 1) + _conv(mid, mid, 3, mid) + 3 * _bn(mid))
        inputs = width
    return total + _conv(464, 1024, 1) + _bn(1024) + _linear(1024, CLASSES)


VGG_BLOCKS = {8: ((64,), (128,), (256,), (512,), (512,)),
              11: ((64,), (128,), (256,) * 2, (512,) * 2, (512,) * 2),
              13: ((64,) * 2, (128,) * 2, (256,) * 2, (512,) * 2, (512,) * 2),
              16: ((64,) * 2, (128,) * 2, (256,) * 3, (512,) * 3, (512,) * 3),
              19: ((64,) * 2, (128,) * 2, (256,) * 4, (512,) * 4, (512,) * 4)}


def _hand_counts():
    counts = {f"resnet{depth}": _cifar_resnet(depth, (16, 16, 32, 64))
              for depth in (8, 14, 20, 32, 44, 56, 110)}
    counts.update({"resnet8x4": _cifar_resnet(8, (32, 64, 128, 256)),
                   "resnet32x4": _cifar_resnet(32, (32, 64, 128, 256)), "ResNet50": _resnet50(),
                   "MobileNetV2": _mobile_half(), "ShuffleV1": _shufflev1(),
                   "ShuffleV2": _shufflev2()})
    counts.update({f"wrn_{depth}_{widen}": _wrn(depth, widen)
                   for depth, widen in ((16, 1), (16, 2), (40, 1), (40, 2))})
    counts.update({f"vgg{depth}": _vgg(blocks) for depth, blocks in VGG_BLOCKS.items()})
    return counts


# The taps for 32x32 inputs and whether RepDistiller's feat[1:-1] (preact=False) are
# post-ReLU there (wrn: raw residual sums; MobileNetV2: linear bottlenecks).
RESNET_TAPS = [(32, 32, 16), (16, 16, 32), (8, 8, 64)]
RESNET_X4_TAPS = [(32, 32, 64), (16, 16, 128), (8, 8, 256)]
VGG_TAPS = [(16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)]
TAPS = {
    **{f"resnet{depth}": (RESNET_TAPS, True) for depth in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (RESNET_X4_TAPS, True), "resnet32x4": (RESNET_X4_TAPS, True),
    "ResNet50": ([(32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)], True),
    "wrn_16_1": ([(32, 32, 16), (16, 16, 32), (8, 8, 64)], False),
    "wrn_40_1": ([(32, 32, 16), (16, 16, 32), (8, 8, 64)], False),
    "wrn_16_2": ([(32, 32, 32), (16, 16, 64), (8, 8, 128)], False),
    "wrn_40_2": ([(32, 32, 32), (16, 16, 64), (8, 8, 128)], False),
    **{f"vgg{depth}": (VGG_TAPS, True) for depth in (8, 11, 13, 16, 19)},
    "MobileNetV2": ([(16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)], False),
    "ShuffleV1": ([(16, 16, 240), (8, 8, 480), (4, 4, 960)], True),
    "ShuffleV2": ([(16, 16, 116), (8, 8, 232), (4, 4, 464)], True),
}


@functools.cache
def network(name):
    keras.utils.set_random_seed(0)
    return models.build_model(f"crd:{name}", CLASSES, weight_decay=WEIGHT_DECAY)


def images(batch=2, size=32):
    return np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype("float32")


def test_the_suite_is_repdistillers_model_dict_and_the_hand_counts_give_the_table():
    assert sorted(NETWORKS) == sorted(REPDISTILLER_PARAMS) == sorted(TAPS)
    assert _hand_counts() == REPDISTILLER_PARAMS


@pytest.mark.parametrize("name", sorted(REPDISTILLER_PARAMS))
def test_parameter_count_equals_repdistillers(name):
    assert models.count_params(network(name)) == REPDISTILLER_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TAPS))
def test_tap_shapes_and_activation_state(name):
    shapes, post_relu = TAPS[name]
    output = network(name)(images(), training=False)
    assert tuple(output["logits"].shape) == (2, CLASSES)
    assert [tuple(tap.shape[1:]) for tap in output["features"]] == shapes
    for tap in output["features"]:
        assert bool(np.any(np.asarray(tap) < 0)) is not post_relu


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "vgg8", "ShuffleV1"])
def test_weight_decay_covers_every_trainable_variable(name):
    model = network(name)
    expected = WEIGHT_DECAY / 2 * sum(np.sum(np.square(np.asarray(w, np.float64)))
                                      for w in model.trainable_weights)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)
    assert len(model.losses) == len(model.trainable_weights)


def test_preactivation_features_are_layers_to_tap():
    model = models.build_model("crd:resnet8x4", CLASSES,
                               taps=("layer1.0.add", "layer2.0.add", "layer3.0.add"))
    features = model(images(), training=False)["features"]
    assert [tuple(f.shape[1:]) for f in features] == RESNET_X4_TAPS
    assert all(np.any(np.asarray(f) < 0) for f in features)


def test_names_the_usual_students_and_the_errors():
    assert models.parse_model_name("crd:resnet8x4") == (
        "crd.resnet", {"depth": 8, "widths": (32, 64, 128, 256)})
    assert [models.student_for(f"crd:{t}") for t in ("resnet32x4", "wrn_40_2", "ResNet50")] == [
        "crd:resnet8x4", "crd:wrn_16_2", "crd:MobileNetV2"]
    with pytest.raises(UserError, match="has no usual student: pass --student"):
        models.student_for("crd:ShuffleV1")
    for name in ("resnet8x4", "crd:resnet9", "crd:wrn16_2", "crd:mobilenetv2", "crd:"):
        assert not models.is_model_name(name)
    assert network("resnet8x4").name == "crd_resnet8x4"


def test_a_saved_network_loads_with_its_slices_and_weight_decay(tmp_path):
    """ShuffleV2 splits channels by slicing (Keras operations, not layers) and ShuffleV1 its
    grouped convolutions; a run saves its student as .keras and reloads its teacher."""
    for name in ("ShuffleV1", "ShuffleV2"):
        model = network(name)
        model.save(tmp_path / f"{name}.keras")
        loaded = keras.saving.load_model(tmp_path / f"{name}.keras", compile=False)
        np.testing.assert_array_equal(loaded(images(), training=False)["logits"],
                                      model(images(), training=False)["logits"])
        assert len(loaded.losses) == len(model.losses)


def test_the_authors_resnets_are_resnet8x4_and_resnet32x4_layer_for_layer():
    """docs/models.md: same layers, widths and parameters, other BN and initialisers."""
    for authors, repdistiller in (("resnet8", "resnet8x4"), ("resnet32", "resnet32x4")):
        ours = models.build_model(authors, CLASSES)
        theirs = network(repdistiller)
        assert models.count_params(ours) == models.count_params(theirs) == (
            REPDISTILLER_PARAMS[repdistiller])
        shapes = [sorted(tuple(w.shape) for w in model.trainable_weights)
                  for model in (ours, theirs)]
        assert shapes[0] == shapes[1]
        assert [tuple(t.shape) for t in ours.output["features"]] == [
            tuple(t.shape) for t in theirs.output["features"]]
        assert models.count_flops(ours) == models.count_flops(theirs)


def test_summary_prints_flops_and_parameters(monkeypatch, capsys):
    monkeypatch.setattr(sskd_tf.data, "get_dataset_info",
                        lambda name: types.SimpleNamespace(num_classes=CLASSES,
                                                           image_shape=(32, 32, 3)))
    summary.run(types.SimpleNamespace(teacher="crd:resnet32x4", student="", dataset="cifar100"))
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["model"] == ["crd_resnet32x4", "crd_resnet8x4"]
    assert rows["FLOPs"] == ["2166.1M", "354.1M", "6.12x"]
    assert rows["params"] == ["7.43M", "1.23M", "6.03x"]


# PyTorch's layers, transcribed in numpy (NHWC), against layers.py.

def _torch_conv(x, kernel, stride, padding, groups=1):
    """nn.functional.conv2d of NHWC `x` with an HWIO kernel of in / groups inputs."""
    x = np.pad(x, [(0, 0), (padding, padding), (padding, padding), (0, 0)])
    size, inputs_per_group = kernel.shape[0], kernel.shape[2]
    outputs_per_group = kernel.shape[3] // groups
    height = (x.shape[1] - size) // stride + 1
    width = (x.shape[2] - size) // stride + 1
    out = np.zeros((x.shape[0], height, width, kernel.shape[3]))
    for group in range(groups):
        inputs = slice(group * inputs_per_group, (group + 1) * inputs_per_group)
        outputs = slice(group * outputs_per_group, (group + 1) * outputs_per_group)
        for row in range(height):
            for col in range(width):
                rows = slice(row * stride, row * stride + size)
                cols = slice(col * stride, col * stride + size)
                out[:, row, col, outputs] = np.einsum("bhwi,hwio->bo", x[:, rows, cols, inputs],
                                                      kernel[..., outputs])
    return out


def _single_layer(build, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, build(inputs))


@pytest.mark.parametrize("kernel_size, stride, groups", [(3, 2, 1), (3, 1, 1), (1, 2, 1), (1, 1, 3),
                                                         (3, 2, 6)])
def test_conv_pads_and_groups_as_pytorch(kernel_size, stride, groups):
    x = images(2, 6)[..., :1].repeat(6, axis=-1) * np.arange(1, 7, dtype="float32")
    model = _single_layer(lambda t: layers.conv(t, 6, kernel_size, "conv", None, stride, groups),
                          (6, 6, 6))
    kernels = [w for w in model.trainable_weights]
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(kernel_size, kernel_size, 6 // groups, 6)).astype("float32")
    if groups == 6:
        kernels[0].assign(np.transpose(kernel, (0, 1, 3, 2)))
    else:
        per_group = 6 // groups
        for group, variable in enumerate(kernels):
            variable.assign(kernel[..., group * per_group:(group + 1) * per_group])
    expected = _torch_conv(x, kernel, stride, kernel_size // 2, groups)
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-5)


def test_average_pool_counts_the_padded_zeros():
    x = np.arange(2 * 4 * 4 * 1, dtype="float32").reshape(2, 4, 4, 1) + 1
    model = _single_layer(lambda t: layers.average_pool(t, 3, 2, "pool"), (4, 4, 1))
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    expected = np.stack([np.stack([padded[:, 2 * r:2 * r + 3, 2 * c:2 * c + 3].sum((1, 2)) / 9
                                   for c in range(2)], 1) for r in range(2)], 1)
    np.testing.assert_allclose(model(x), expected, rtol=1e-6)


def test_channel_shuffle_is_shufflenets_view_permute_reshape():
    x = np.arange(2 * 2 * 2 * 12, dtype="float32").reshape(2, 2, 2, 12)
    model = _single_layer(lambda t: layers.channel_shuffle(t, 3, "shuffle"), (2, 2, 12))
    nchw = x.transpose(0, 3, 1, 2)
    shuffled = nchw.reshape(2, 3, 4, 2, 2).transpose(0, 2, 1, 3, 4).reshape(2, 12, 2, 2)
    np.testing.assert_array_equal(model(x), shuffled.transpose(0, 2, 3, 1))


def test_initialisers_are_pytorchs():
    """Kaiming normal fan_out N(0, 2 / (k k out)), the depthwise kernels' too (Keras' own
    fan_out of a depthwise kernel is k k); PyTorch's default U(+-1 / sqrt(fan_in)) with the
    grouped fan_in for ShuffleV1 and for the dense layers that keep it."""
    resnet, mobile, shuffle = network("resnet32x4"), network("MobileNetV2"), network("ShuffleV1")

    def kernel(model, layer):
        return np.asarray(model.get_layer(layer).weights[0])

    for model, layer, std in ((resnet, "layer3.4.conv2", math.sqrt(2 / (9 * 256))),
                              (mobile, "blocks.6.0.conv.3", math.sqrt(2 / (9 * 480)))):
        values = kernel(model, layer)
        assert values.std() == pytest.approx(std, rel=0.05) and abs(values.mean()) < std / 10
    for model, layer, fan_in in ((shuffle, "layer3.1.conv1.group0", 960 // 3),
                                 (shuffle, "layer3.1.conv2", 9), (resnet, "fc", 256)):
        values = kernel(model, layer)
        bound = 1 / math.sqrt(fan_in)
        assert values.max() <= bound and values.min() >= -bound
        assert values.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    bias = np.asarray(resnet.get_layer("fc").bias)
    assert np.abs(bias).max() <= 1 / 16 and np.abs(bias).min() > 0
    assert np.asarray(network("vgg8").get_layer("classifier").kernel).std() == pytest.approx(
        0.01, rel=0.05)


# One traced training step of the project's Distiller. By default one network of five kinds
# (CIFAR ResNet, WRN, VGG, MobileNetV2, ShuffleNetV2 blocks: 30 s together); with -m slow the
# others, among them ShuffleV1 (20 s to trace) and the largest, ResNet50, vgg19, resnet110.
DEFAULT_STEPS = ("resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV2")


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in DEFAULT_STEPS else pytest.mark.slow)
    for name in sorted(NETWORKS)])
def test_one_traced_distiller_step(name):
    keras.utils.set_random_seed(0)
    student = models.build_model(f"crd:{name}", CLASSES, weight_decay=WEIGHT_DECAY, role="student")
    distiller = Distiller(None, student, loss_of(build_method("none")), steps_in_epoch=1)
    distiller.build((None, 32, 32, 3))
    distiller.compile(optimizer=TF1Momentum(0.05, nesterov=False))
    before = [np.asarray(v) for v in student.trainable_variables]
    logs = tf.function(distiller.train_step)((tf.constant(images()), tf.constant([3, 97])))
    assert np.isfinite(float(logs["loss"])) and float(logs["skipped_steps"]) == 0
    assert float(logs["wd_loss"]) > 0
    changed = [not np.array_equal(b, np.asarray(v))
               for b, v in zip(before, student.trainable_variables)]
    assert all(changed)
