"""Preprocessing and augmentation recipes, applied to whole batches inside the tf.data graph.

The authors' two recipes normalise with their constants, CIFAR-100's per-channel mean and
standard deviation listed in B, G, R order, while the images are RGB: red is centred with blue's
mean and the other way round. Both of the authors' pipelines do this; it is kept so that the
networks see the same inputs (it is only a different fixed affine map per channel, which the
first convolution absorbs); their TF2 rewrite (kd_tf2) rounds the same constants to integers.
crd2020 (RepDistiller) normalises with CIFAR-100's RGB constants.

The authors' recipes augment normalised images; crd2020 augments the pixels and normalises
after, as torchvision's transforms run before ToTensor and Normalize (`PIXEL_AUGMENTATIONS`).

All randomness is stateless and drawn from the `seed` given with each batch, so a pipeline
replays exactly from its seed.
"""
import math

import tensorflow as tf

from sskd_tf.registry import Registry

CIFAR_MEAN = (112.4776, 124.1058, 129.3773)
CIFAR_STD = (70.4587, 65.4312, 68.2094)
# RepDistiller `dataset/cifar100.py`: Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565,
# 0.2761)) of [0, 1] RGB images, here on the 0-255 scale of the uint8 images.
CRD_MEAN = tuple(255 * value for value in (0.5071, 0.4867, 0.4408))
CRD_STD = tuple(255 * value for value in (0.2675, 0.2565, 0.2761))
# Knowledge_distillation_via_TF2.0 `dataloader.py` (CIFAR-100): the constants above, rounded.
KD_TF2_MEAN = (112.0, 124.0, 129.0)
KD_TF2_STD = (70.0, 65.0, 68.0)
# The constants each recipe normalises the CIFAR datasets with (mean, std per channel).
CIFAR_NORMALIZATIONS = {"kd_methods": (CIFAR_MEAN, CIFAR_STD), "eccv2018": (CIFAR_MEAN, CIFAR_STD),
                        "kd_tf2": (KD_TF2_MEAN, KD_TF2_STD), "crd2020": (CRD_MEAN, CRD_STD)}
# The recipes whose augmentation acts on the pixel values, before normalisation.
PIXEL_AUGMENTATIONS = ("crd2020",)
PAD = 4
PAD_IMAGE_SIZE = 32  # the recipes pad 4 pixels of a 32x32 image; other sizes pad in proportion
MAX_ROTATION_DEGREES = 15.0

AUGMENTATIONS = Registry("recipe")


def normalize(images, mean=CIFAR_MEAN, std=CIFAR_STD):
    """uint8 (or float) images -> float32 (x - mean) / std, per channel (default: the
    recipes' CIFAR constants)."""
    return (tf.cast(images, tf.float32) - mean) / std


def padding(images):
    """The recipes' 4-pixel padding scaled to the images' height (4 at 32x32)."""
    return max(1, round(PAD * images.shape[1] / PAD_IMAGE_SIZE))


def random_flip_left_right(images, seed):
    """Mirrors each image of the batch with probability 1/2."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


def crop(images, offsets, size):
    """Crops `size` x `size` from each image at its own (row, column) offset, [B, 2] ints."""
    window = tf.range(size)
    rows = tf.gather(images, offsets[:, :1] + window, axis=1, batch_dims=1)
    return tf.gather(rows, offsets[:, 1:] + window, axis=2, batch_dims=1)


def pad_and_crop(images, pad, seed, mode="CONSTANT"):
    """Pads `pad` pixels on each side (`mode` of `tf.pad`: zeros, or "REFLECT"), then crops
    each image back to its size at its own random offset, uniform in [0, 2 pad] along each
    axis."""
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=mode)
    offsets = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed, maxval=2 * pad + 1,
                                          dtype=tf.int32)
    return crop(padded, offsets, tf.shape(images)[1])


def rotate(images, angles):
    """Rotates each image counterclockwise by its angle (radians) about its centre.

    Nearest-neighbour sampling; pixels rotated in from outside the image are 0.
    """
    height, width = tf.unstack(tf.cast(tf.shape(images)[1:3], tf.float32))
    center_x, center_y = (width - 1) / 2, (height - 1) / 2
    cos, sin = tf.cos(angles), tf.sin(angles)
    zeros = tf.zeros_like(angles)
    # Each row maps an output pixel (x, y) to the input pixel it is sampled from.
    output_to_input = tf.stack([
        cos, -sin, center_x - cos * center_x + sin * center_y,
        sin, cos, center_y - sin * center_x - cos * center_y,
        zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=output_to_input, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")


@AUGMENTATIONS.register("kd_methods")
def kd_methods_augment(images, seed):
    """KD_methods_with_TF `dataloader.py`: random flip, reflect-pad 4, random 32x32 crop
    (at other image sizes, a padding in proportion and a crop back to the size).

    As in the original, which crops the padded batch in one call, the crop offset is drawn once
    per batch and shared by all its images; the flips are drawn per image.
    """
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    images = random_flip_left_right(images, flip_seed)
    pad = padding(images)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    return tf.image.stateless_random_crop(padded, tf.shape(images), crop_seed)


@AUGMENTATIONS.register("eccv2018")
def eccv2018_augment(images, seed):
    """SSKD_SVD `preprocessing/cifar100_preprocessing.py` (`train.py` asks for 'cifar100').

    Random flip, random rotation in [-15, 15) degrees (nearest), zero-pad 4, random 32x32
    crop, all drawn per image (padding in proportion at other sizes). As in the original,
    rotation and padding act on normalised images, so their filled pixels are 0 after
    normalisation (the mean colour), not black.
    """
    flip_seed, angle_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    batch = tf.shape(images)[0]
    pad = padding(images)  # before the rotation, whose output has no static size
    images = random_flip_left_right(images, flip_seed)
    max_angle = math.radians(MAX_ROTATION_DEGREES)
    images = rotate(images, tf.random.stateless_uniform(
        [batch], angle_seed, minval=-max_angle, maxval=max_angle))
    return pad_and_crop(images, pad, crop_seed)


@AUGMENTATIONS.register("kd_tf2")
def kd_tf2_augment(images, seed):
    """Knowledge_distillation_via_TF2.0 `dataloader.py` (`Cifar100`): random flip,
    reflect-pad 4, random 32x32 crop, on normalised images, as kd_methods but mapped over
    the images before batching, so the crop offsets are drawn per image (padding in
    proportion at other sizes)."""
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    images = random_flip_left_right(images, flip_seed)
    return pad_and_crop(images, padding(images), crop_seed, mode="REFLECT")


@AUGMENTATIONS.register("crd2020")
def crd2020_augment(images, seed):
    """RepDistiller `dataset/cifar100.py`: RandomCrop(32, padding=4), then RandomHorizontalFlip,
    on the pixels (`PIXEL_AUGMENTATIONS`): zero-pad 4 (black, before normalisation), a random
    32x32 crop and a flip with probability 1/2, both drawn per image (padding in proportion at
    other sizes)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    return random_flip_left_right(pad_and_crop(images, padding(images), crop_seed), flip_seed)
