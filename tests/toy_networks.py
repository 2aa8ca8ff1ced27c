"""A small network with a tall and a wide feature map, for tests of the KD-SVD step."""
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
