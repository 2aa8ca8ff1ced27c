"""Where the decompositions run (`--decomposition_device`): the host CPU or the device of
the step, requested per decomposition while the step is traced."""
import tensorflow as tf

from sskd_tf.linalg import DECOMPOSITION_DEVICES


def step_device():
    """The device the current step runs on: the requested device of an op created here
    (a replica's device under MirroredStrategy, or a `tf.device` scope), else the device
    TensorFlow prefers by default (the first accelerator, if any)."""
    requested = tf.constant(0.0).device
    if requested:
        return tf.DeviceSpec.from_string(requested)
    for kind in ("TPU", "GPU"):
        if tf.config.list_logical_devices(kind):
            return tf.DeviceSpec(device_type=kind, device_index=0)
    return tf.DeviceSpec(device_type="CPU", device_index=0)


def decomposition_device(choice):
    """Device string for the decompositions of the step being traced, or None (where the
    step runs). "cpu": the host CPU of the step's device (same job and task);
    "accelerator": no placement; "auto": the authors' choice (KD_methods_with_TF
    `nets/SVP.py` wraps every decomposition in `tf.device('CPU')`), which is "cpu"
    when the step runs on a GPU or TPU and None otherwise. On a GPU this also keeps
    Eigen's SVD (the faithful teacher signs) instead of cuSOLVER's."""
    if choice not in DECOMPOSITION_DEVICES:
        raise ValueError(f"unknown decomposition device {choice!r}; choose one of: "
                         f"{', '.join(DECOMPOSITION_DEVICES)}")
    if choice == "accelerator":
        return None
    step = step_device()
    if choice == "auto" and step.device_type not in ("GPU", "TPU"):
        return None
    return step.replace(device_type="CPU", device_index=0).to_string()


def placed(decompose, device):
    """`decompose` with its forward operations requested on `device` (None: unchanged)."""
    if device is None:
        return decompose

    def run(x):
        with tf.device(device):
            return decompose(x)

    return run
