"""The 8x8 handwritten digits, bundled as `digits.npz` so that a run needs no download.

Provenance: the test set of the UCI "Optical Recognition of Handwritten Digits" data set
(Alpaydin and Kaynak, 1998; CC BY 4.0), as redistributed by scikit-learn (BSD-3-Clause) in
`sklearn.datasets.load_digits`: 1,797 images of 8x8 grey levels 0..16, 10 classes.
`build_digits_npz.py` wrote `digits.npz` from it: grey levels scaled to 0..255, and a fixed
stratified split of 1,437 train / 360 test images stored as indices.

To fit the 32x32x3 networks, each image is upscaled 4x by nearest neighbour (every original
pixel becomes a 4x4 block; no interpolated grey levels are invented, and the result is the same
on every machine) and repeated over the three colour channels. The recipes then normalise it
with the CIFAR constants, which put the black background at -1.6..-1.9 and full ink at
+1.8..+2.0 depending on the channel: a usable scale for networks with batch normalisation, so no
digits-specific constants are kept.
"""
import os
import zipfile

import numpy as np

from sskd_tf.data.catalog import DATASETS, IMAGE_SHAPE, DatasetInfo, DatasetSource
from sskd_tf.errors import UserError

NPZ_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")
_UPSCALE = IMAGE_SHAPE[0] // 8
# A first, offline run should finish in minutes on a laptop CPU and learn: the
# recipe's 100 epochs at batch 128 would take hours, and 5 epochs of 12 steps learn
# little. Batch 32 at learning rate 0.02 (0.1 * 32/128 per example, as the recipe)
# gives 4x the updates: resnet8 reaches about 89% in 5 epochs (measured; flags override).
RUN_DEFAULTS = {"epochs": 5, "batch_size": 32, "learning_rate": 0.02}
# The arrays of digits.npz and their dtype kinds: u unsigned, i signed integers.
_BUNDLE_DTYPES = {"images": "u", "labels": "ui", "train_indices": "ui", "test_indices": "ui"}
_RESTORE = "restore it with `git checkout -- sskd_tf/data/digits.npz`"


def to_cifar_shape(images):
    """uint8 [N, 8, 8] -> uint8 [N, 32, 32, 3]: 4x nearest-neighbour upscale, grey to RGB."""
    upscaled = images.repeat(_UPSCALE, axis=1).repeat(_UPSCALE, axis=2)
    return np.ascontiguousarray(np.repeat(upscaled[..., None], IMAGE_SHAPE[2], axis=3))


def load_digits(data_dir=None, download=False):
    """The four arrays of the bundled digits; `data_dir` and `download` are not used. A damaged
    bundle (truncated, other arrays or dtypes) is a one-line UserError; it is read
    without pickle, so it cannot run code."""
    del data_dir, download
    try:
        with np.load(NPZ_PATH, allow_pickle=False) as bundle:
            arrays = {name: bundle[name] for name in _BUNDLE_DTYPES}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(f"{NPZ_PATH} cannot be read ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else 'damaged'}); {_RESTORE}") from None
    wrong = [f"{name} is {arrays[name].dtype}" for name, kinds in _BUNDLE_DTYPES.items()
             if arrays[name].dtype.kind not in kinds]
    if wrong:
        raise UserError(f"{NPZ_PATH} holds other arrays than it should ({', '.join(wrong)}); {_RESTORE}")
    images, labels = to_cifar_shape(arrays["images"]), arrays["labels"].astype(np.int64)
    train, test = arrays["train_indices"], arrays["test_indices"]
    return images[train], labels[train], images[test], labels[test]


DATASETS.register("digits", DatasetSource(
    info=DatasetInfo("digits", num_classes=10, image_shape=IMAGE_SHAPE,
                     num_train=1_437, num_test=360, run_defaults=RUN_DEFAULTS),
    load=load_digits))
