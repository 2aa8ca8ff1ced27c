"""Distribution strategies of `--strategy`."""
import functools

import tensorflow as tf

from sskd_tf.errors import UserError

STRATEGIES = ("default", "mirrored", "multi_worker")


def _split_cpu(count):
    """Expose `count` logical CPU devices (possible only before TensorFlow starts)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) < count:
            raise ValueError(
                f"--strategy=mirrored on CPU needs {count} logical CPU devices, and TensorFlow "
                "was started before they could be made") from None


@functools.cache
def make_strategy(name, cpu_replicas=2):
    """default: one device. mirrored: MirroredStrategy over every GPU, or over
    `cpu_replicas` logical CPU devices when there is none. multi_worker:
    MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable.

    One strategy of a kind per process (a run and the teacher it trains first share it).
    Both of the last two must be made before TensorFlow runs anything: a run makes its
    strategy first (training/run.py `train`)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        _split_cpu(cpu_replicas)
        devices = [device.name for device in tf.config.list_logical_devices("CPU")[:cpu_replicas]]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
