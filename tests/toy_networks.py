"""Small networks for tests of a train step: a tall and a wide feature map (KD-SVD), and
stages whose taps are batch-norm outputs before their ReLU (CO)."""
import keras


def toy_network(seed):
    """{"logits", "features"} of 8x8x3 images: a tall (8x8x8) and a wide (4x4x32) map."""
    initializer = keras.initializers.RandomNormal(stddev=0.3, seed=seed)
    inputs = keras.Input((8, 8, 3))
    first = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                                kernel_initializer=initializer)(inputs)
    second = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu",
                                 kernel_initializer=initializer)(first)
    logits = keras.layers.Dense(3, kernel_initializer=initializer)(
        keras.layers.GlobalAveragePooling2D()(second))
    return keras.Model(inputs, {"logits": logits, "features": [first, second]})


def pre_activation_network(seed, widths=(4, 8, 8), stddev=0.3):
    """{"logits", "features"} of 8x8x3 images: conv -> BN (the tap) -> ReLU per stage, the
    taps of `widths` at 8, 4 and 2 pixels."""
    initializer = keras.initializers.RandomNormal(stddev=stddev, seed=seed)
    x = inputs = keras.Input((8, 8, 3))
    taps = []
    for width, stride in zip(widths, (1, 2, 2)):
        x = keras.layers.BatchNormalization()(keras.layers.Conv2D(
            width, 3, strides=stride, padding="same", kernel_initializer=initializer)(x))
        taps.append(x)
        x = keras.layers.ReLU()(x)
    logits = keras.layers.Dense(5, kernel_initializer=initializer)(
        keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, {"logits": logits, "features": taps})
