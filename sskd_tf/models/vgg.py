"""VGG networks of the ECCV 2018 release (sseung0703/SSKD_SVD): the teacher after
`nets/VGG_teacher.py`, the student after `nets/VGG.py`.

Blocks of 3x3 conv+bias+ReLU, each closed by a 2x2 max pool; flatten; dense
1024-ReLU-dropout(0.5) layers (two in the teacher, one in the student); a dense layer
to the classes. Kernels are initialised by variance scaling (factor 2, fan_in), biases
by zeros. With 100 classes this gives the paper's 576.3M / 121.3M FLOPs and 10.9M / 3.8M
parameters.

Taps: each block's pooled output, for 32x32 inputs 16x16x64, 8x8x128, 4x4x256, 2x2x512.

Weight decay: conv and dense kernels only; biases are not decayed.
"""
import keras

from sskd_tf.models import common

BATCH_NORM = None  # no batch normalisation in these networks

BLOCKS = {
    "teacher": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512)),
    "student": ((64,), (128,), (256,), (512,)),
}
HIDDEN_UNITS = {"teacher": (1024, 1024), "student": (1024,)}
DROPOUT_RATE = 0.5


def build(name, num_classes, input_shape, weight_decay, role):
    decay = common.l2_decay(weight_decay)
    initializer = common.variance_scaling("fan_in")
    image = keras.Input(input_shape, name="image")
    x = image
    taps = []
    for block, widths in enumerate(BLOCKS[role]):
        for index, width in enumerate(widths):
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                    kernel_initializer=initializer, kernel_regularizer=decay,
                                    name=f"block{block}_conv{index}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        taps.append(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(HIDDEN_UNITS[role], start=1):
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=initializer,
                               kernel_regularizer=decay, name=f"fc{index}")(x)
        x = keras.layers.Dropout(DROPOUT_RATE, name=f"fc{index}_dropout")(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=initializer,
                                kernel_regularizer=decay, name="logits")(x)
    return common.network(image, logits, taps, name)
