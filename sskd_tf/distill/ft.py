"""FT: factor transfer, its mathematics and the registered method "ft" (`FactorTransfer`).

Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer",
NeurIPS 2018 (arXiv 1802.04977). A paraphraser, an autoencoder trained on the teacher's last
map alone, extracts the teacher's "factor"; a translator on the student's last map learns to
produce the same factor, both L2-normalised per position, compared by the mean absolute
difference (the paper's p = 1).

Followed: KD_methods_with_TF `nets/Response.py` (`Factor_Transfer`), `nets/ResNet.py` (the
call), `op_util.py` (`Optimizer_w_FT`) and `train_w_distill.py`. Quirks kept:

- The taps: the authors pass `feats_noact[-1]`, but `feats_noact` is read from the 'feat'
  collection, so both maps are the post-ReLU outputs of the last stage ([B, 8, 8, 256] for
  ResNet32 and ResNet8): give this module the networks' usual last taps.
- Every conv and transposed conv has a bias (zeros) and SAME padding; widths D/2, D/4, D/8 of
  the teacher's width D, stride 2 in the middle layer. Encoder (paraphraser E_p and, with its
  own weights, translator E_tr): conv3x3 + leaky-ReLU(0.2), conv3x3 stride 2 + leaky-ReLU,
  conv3x3 linear. Decoder: leaky-ReLU of the factor, then transposed conv3x3 to D/4, stride-2
  transposed conv3x3 to D/2, transposed conv3x3 to D, each followed by a leaky-ReLU, the last
  one too (the reconstruction of a post-ReLU map can go negative, at slope 0.2).
- Initialisers: the convs by variance scaling on fan-out (the authors' arg scope), the
  transposed convs by Glorot uniform (contrib's default: the arg scope does not list them).
- The factors are the encoders' linear outputs, L2-normalised over channels per position,
  before any leaky-ReLU.
- Weight decay: the paraphraser's, only in its own stage, 5e-4 sum(w^2), not halved, over its
  kernels (the variables named 'weights'; biases excluded): `Paraphraser.weight_decay`. The
  translator's kernels take the arg scope's regularizer, 5e-4 sum(w^2) / 2, added to the
  student's weight decay: `Translator` carries it as a Keras kernel regularizer.

The authors' schedule (CIFAR-100, batch 128, SGD with Nesterov momentum 0.9, one optimizer
whose momentum slots are per variable):
1. Epochs 0-39 (15625 steps): only the paraphraser trains, on `reconstruction_loss +
   paraphraser.weight_decay()`, learning rate 0.1 (no BN involved, no update ops run); the
   global step counts these steps.
2. Epochs 40-139: the student and the translator train on CE + weight decay (the student's
   and the translator's, sum/2) + `TRANSFER_WEIGHT` (500) x `factor_transfer_loss`, a plain sum
   of gradients, no clipping; the paraphraser frozen; learning rate 0.1, times 0.1 at epochs
   70, 100 and 120; student BN in training mode, the teacher in inference mode. Nothing is
   reset between the stages.
"""
import dataclasses

import keras
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.distill.stages import Stage, Update
from sskd_tf.errors import UserError
from sskd_tf.models import common

AUTHORS_INIT_EPOCHS = 40
LEAKY_SLOPE = 0.2
TRANSFER_WEIGHT = 500.0
PARAPHRASER_WEIGHT_DECAY = 5e-4
TRANSLATOR_WEIGHT_DECAY = 5e-4
# Per layer, the teacher's width D divided by: encoder D // 2, D // 4, D // 8; decoder back.
WIDTH_DIVISORS = (2, 4, 8)
DECODER_DIVISORS = (4, 2, 1)
STRIDES = (1, 2, 1)


def _leaky(x):
    return tf.nn.leaky_relu(x, alpha=LEAKY_SLOPE)


def _check_width(width):
    if width < WIDTH_DIVISORS[-1]:
        raise UserError(f"FT: the teacher's map has {width} channels; the paraphraser needs D >= "
                        f"{WIDTH_DIVISORS[-1]} (its narrowest layer has D // {WIDTH_DIVISORS[-1]})")


def _check_teacher_shape(shape, width):
    if len(shape) != 4 or shape[-1] != width:
        raise UserError(f"FT: a paraphraser of width {width} cannot take the map {tuple(shape[1:])}")
    if shape[1] % 2 or shape[2] % 2:
        raise UserError(f"FT: the teacher's map {tuple(shape[1:])} needs an even height and "
                        "width (the paraphraser halves and doubles them)")


def _encoder(width, kernel_regularizer, dtype):
    return [keras.layers.Conv2D(width // divisor, 3, stride, padding="same",
                                kernel_initializer=common.variance_scaling("fan_out"),
                                kernel_regularizer=kernel_regularizer, dtype=dtype, name=f"conv{layer}")
            for layer, (divisor, stride) in enumerate(zip(WIDTH_DIVISORS, STRIDES))]


def _build_chain(layers, input_shape):
    for layer in layers:
        layer.build(input_shape)
        input_shape = layer.compute_output_shape(input_shape)


def _encode(convs, feature_map):
    for conv in convs[:-1]:
        feature_map = _leaky(conv(feature_map))
    return convs[-1](feature_map)


def factor(encoded):
    """A factor: the encoder's output L2-normalised over channels at every position."""
    return tf.math.l2_normalize(encoded, axis=-1)


class Paraphraser(keras.layers.Layer):
    """The paraphraser of a teacher map of width `width`: `encode` (E_p, its factor before
    normalisation) and `call` (the reconstruction, decoder(E_p(t)))."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.width = int(width)
        _check_width(self.width)
        self.encoder = _encoder(self.width, None, self.dtype_policy)
        self.decoder = [keras.layers.Conv2DTranspose(self.width // divisor, 3, stride, padding="same",
                                                     dtype=self.dtype_policy, name=f"deconv{layer}")
                        for layer, (divisor, stride) in enumerate(zip(DECODER_DIVISORS, STRIDES))]

    def build(self, input_shape):
        _check_teacher_shape(input_shape, self.width)
        _build_chain(self.encoder + self.decoder, input_shape)

    def encode(self, teacher_map):
        if not self.built:
            self.build(teacher_map.shape)
        return _encode(self.encoder, teacher_map)

    def call(self, teacher_map):
        reconstruction = _leaky(self.encode(teacher_map))
        for deconv in self.decoder:
            reconstruction = _leaky(deconv(reconstruction))
        return reconstruction

    def weight_decay(self, weight_decay=PARAPHRASER_WEIGHT_DECAY):
        """weight_decay * sum(w^2), not halved, over the kernels (not the biases)."""
        return weight_decay * tf.add_n([tf.reduce_sum(tf.square(layer.kernel))
                                        for layer in self.encoder + self.decoder])


class Translator(keras.layers.Layer):
    """The translator E_tr: the paraphraser's encoder, with its own weights, from the student's
    map to the factor (before normalisation) of a teacher map of width `width`; its kernels
    carry the weight decay weight_decay * sum(w^2) / 2 (`common.l2_decay`)."""

    def __init__(self, width, weight_decay=TRANSLATOR_WEIGHT_DECAY, **kwargs):
        super().__init__(**kwargs)
        self.width = int(width)
        _check_width(self.width)
        self.encoder = _encoder(self.width, common.l2_decay(weight_decay), self.dtype_policy)

    def build(self, input_shape):
        _build_chain(self.encoder, input_shape)

    def call(self, student_map):
        return _encode(self.encoder, student_map)


def reconstruction_loss(teacher_map, paraphraser):
    """The paraphraser stage's loss mean |t - decoder(E_p(t))| (weight decay apart); the
    teacher's map gets no gradient."""
    teacher_map = tf.stop_gradient(teacher_map)
    return tf.reduce_mean(tf.abs(teacher_map - paraphraser(teacher_map)))


def factor_transfer_loss(student_map, teacher_map, paraphraser, translator):
    """mean |F_T - F_S|, F_T = factor(E_p(t)) a constant, F_S = factor(E_tr(s)); unweighted
    (the authors multiply it by `TRANSFER_WEIGHT`)."""
    if tuple(student_map.shape[1:3]) != tuple(teacher_map.shape[1:3]):
        raise UserError(f"FT: the student's map {tuple(student_map.shape[1:])} and the teacher's "
                        f"{tuple(teacher_map.shape[1:])} must have the same height and width")
    teacher_factor = tf.stop_gradient(factor(paraphraser.encode(teacher_map)))
    return tf.reduce_mean(tf.abs(teacher_factor - factor(translator(student_map))))


@dataclasses.dataclass(frozen=True)
class FTOptions(MethodOptions):
    weight: float = option(TRANSFER_WEIGHT, "weight of the factor-transfer term (the "
                           "authors' 500)", at_least=0)
    init_epochs: int = option(
        AUTHORS_INIT_EPOCHS, "epochs in which the paraphraser alone trains on the teacher's "
        "reconstruction, before the student (the authors' 40)", at_least=1)


@METHODS.register("ft")
class FactorTransfer(DistillationMethod):
    """Factor transfer (Kim, Park, Kwak, NeurIPS 2018) on the networks' last taps, in the
    authors' two stages: `init_epochs` (40) epochs of the paraphraser alone on the teacher's
    reconstruction and its own weight decay (5e-4 sum(w^2) over its kernels), then the
    student and the translator on CE + weight decay + `weight` (500) x mean |F_T - F_S|,
    the paraphraser frozen. The translator's kernels decay with the student's (sum/2).
    The maps are cast to the method's variable dtype (float32 under a mixed policy)."""

    Options = FTOptions
    library_name = "FTDistillation"

    def stages(self):
        # `Optimizer_w_FT`'s two train ops: the paraphraser's (the student not run), then the
        # student's and the translator's, summed; the paraphraser gets no gradient there (the
        # teacher's factor is a constant). The "method" part also holds the translator: in the
        # first stage its decay enters the reported `wd_loss`, but it receives no gradient (an
        # update without the task decays only what its loss reaches), so it does not move.
        paraphrase = Update(trains=("method",), task=False, distillation="paraphraser_loss",
                            reads_student=False)
        return (Stage("paraphraser", epochs=self.options.init_epochs, updates=(paraphrase,)),
                Stage(updates=(Update(trains=("student", "method"), rule=self.gradient_rule),)))

    def build(self, student_out_shape, teacher_out_shape):
        student, teacher = student_out_shape["features"][-1], teacher_out_shape["features"][-1]
        if tuple(student[1:3]) != tuple(teacher[1:3]):
            raise UserError(f"FT: the student's last map {tuple(student[1:])} and the "
                            f"teacher's {tuple(teacher[1:])} must have the same height and width")
        self.paraphraser = Paraphraser(teacher[-1], dtype=self.dtype_policy, name="paraphraser")
        self.paraphraser.build(tuple(teacher))
        self.translator = Translator(teacher[-1], dtype=self.dtype_policy, name="translator")
        self.translator.build(tuple(student))

    def paraphraser_loss(self, student_out, teacher_out, labels, training=False):
        """The first stage's terms: the reconstruction and the paraphraser's weight decay."""
        teacher = tf.cast(teacher_out["features"][-1], self.variable_dtype)
        return {"reconstruction": reconstruction_loss(teacher, self.paraphraser),
                "paraphraser_decay": self.paraphraser.weight_decay()}

    def call(self, student_out, teacher_out, labels, training=False):
        student = tf.cast(student_out["features"][-1], self.variable_dtype)
        teacher = tf.cast(teacher_out["features"][-1], self.variable_dtype)
        return {"factor_transfer": self.options.weight * factor_transfer_loss(
            student, teacher, self.paraphraser, self.translator)}

    @classmethod
    def search_space(cls, hp):
        return {"weight": hp.Float("weight", 10.0, 1e4, sampling="log", default=TRANSFER_WEIGHT)}
