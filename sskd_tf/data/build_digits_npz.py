"""Writes `digits.npz` from the copy of the digits set inside scikit-learn.

Run once by hand (`python -m sskd_tf.data.build_digits_npz`); scikit-learn is needed only here,
never at run time. The 0..16 grey levels become 0..255 (round(v * 255 / 16)); the test split is a
stratified draw of 360 images with seed 0, stored as indices into `images` so that every machine
uses the same split.
"""
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NUM_TEST = 360
SPLIT_SEED = 0
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.npz")


def main():
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    train_indices, test_indices = train_test_split(
        np.arange(len(labels)), test_size=NUM_TEST, random_state=SPLIT_SEED, stratify=labels)
    np.savez_compressed(OUTPUT, images=images, labels=labels,
                        train_indices=np.sort(train_indices).astype(np.int32),
                        test_indices=np.sort(test_indices).astype(np.int32))
    print(f"wrote {OUTPUT}: {len(train_indices)} train, {len(test_indices)} test images")


if __name__ == "__main__":
    main()
