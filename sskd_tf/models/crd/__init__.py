"""The networks of CRD's CIFAR-100 benchmark (Tian et al., ICLR 2020), after
HobbitLong/RepDistiller `models/`, named `crd:<name>` with the names of its
`models/__init__.py` model_dict (`crd:resnet8x4`, `crd:wrn_40_2`, `crd:MobileNetV2`, ...).

The prefix keeps them apart from the authors' own networks: RepDistiller's `resnet8` is
16 channels wide, the authors' `resnet8` 64 (it is RepDistiller's `resnet8x4`, see
docs/models.md).

This module holds the names only and imports no TensorFlow (the flags validate names
through `sskd_tf.models.names`); each network is built by the module of this package that
`NETWORKS` names, with the keyword arguments it lists.
"""
PREFIX = "crd:"

_CIFAR_RESNET = {f"resnet{depth}": ("resnet", {"depth": depth, "widths": (16, 16, 32, 64)})
                 for depth in (8, 14, 20, 32, 44, 56, 110)}
_WIDE_RESNET = {f"wrn_{depth}_{widen}": ("wrn", {"depth": depth, "widen_factor": widen})
                for depth, widen in ((16, 1), (16, 2), (40, 1), (40, 2))}
_VGG = {f"vgg{depth}": ("vgg", {"depth": depth}) for depth in (8, 11, 13, 16, 19)}

NETWORKS = {
    **_CIFAR_RESNET,
    "resnet8x4": ("resnet", {"depth": 8, "widths": (32, 64, 128, 256)}),
    "resnet32x4": ("resnet", {"depth": 32, "widths": (32, 64, 128, 256)}),
    "ResNet50": ("resnetv2", {"blocks_per_stage": (3, 4, 6, 3)}),
    **_WIDE_RESNET,
    **_VGG,
    "MobileNetV2": ("mobilenetv2", {"expansion": 6, "width_multiplier": 0.5}),
    "ShuffleV1": ("shufflenetv1", {}),
    "ShuffleV2": ("shufflenetv2", {}),
}

# Each teacher of RepDistiller's README tables with the student of its first column.
USUAL_STUDENTS = {
    "resnet32x4": "resnet8x4",
    "resnet56": "resnet20",
    "resnet110": "resnet20",
    "wrn_40_2": "wrn_16_2",
    "vgg13": "vgg8",
    "ResNet50": "MobileNetV2",
}
