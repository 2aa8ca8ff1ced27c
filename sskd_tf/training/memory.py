"""The memory a run needs, estimated before any data is read or resized, and a one-line
refusal when the machine has less: the kernel would otherwise kill the run without a word.

The estimate adds what a run holds at once, each part counted low, so that a run which
fits is never refused:
- the images: both splits as uint8 at the run's size (kept whole: `take_train` and
  `take_test` slice them), and, when they are resized, the dataset as read and one
  chunk of the resize in float32 (`pipeline.RESIZE_CHUNK` images);
- the input pipeline: the kept images as tensors, and the normalised validation set it
  caches in float32;
- training: half the values the student's layers output at the batch size (what the
  backward pass keeps: measured 60% for resnet8 and resnet32 on CPU), and twice the
  teacher's largest layer output (its forward pass frees each output once used:
  measured 5% of all of them for resnet32).
The images of datasets whose size is known only once read (`folder:`, `tfds:`) and
TensorFlow's own memory (about 1 GB) are left out. What the machine has is
/proc/meminfo's MemAvailable (else the free physical memory), no more than the memory
limit of the cgroup the run is in.
"""
import functools
import math
import os

import keras

from sskd_tf import data as datasets
from sskd_tf import models
from sskd_tf.data.pipeline import RESIZE_CHUNK
from sskd_tf.distill import METHODS
from sskd_tf.errors import UserError
from sskd_tf.models.names import KERAS_PREFIX
from sskd_tf.training.precision import FULL_PRECISION

# Memory limits of the cgroup the process is in: cgroup v2, then v1 ("max": none).
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
# The flags that shrink each part of the estimate.
_LOWERED_BY = {"images": ("--image_size",),
               "pipeline": ("--image_size", "--take_train", "--take_test"),
               "training": ("--batch_size", "--image_size")}


def _read_number(path, field=None):
    """The number in file `path` (or in its line `field: N kB`, in bytes); None if none."""
    try:
        with open(path) as handle:
            if field is None:
                return int(handle.read())
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields[field].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def available_memory():
    """Bytes of memory a run can take (see the module docstring); None where unknown."""
    free = _read_number("/proc/meminfo", "MemAvailable")
    if free is None and "SC_AVPHYS_PAGES" in os.sysconf_names:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    known = [size for size in [free, *map(_read_number, CGROUP_LIMITS)] if size is not None]
    return min(known, default=None)


@functools.lru_cache(maxsize=None)
def layer_outputs(name, num_classes, image_shape, taps, role):
    """The number of values each layer of the network `name` outputs for one image
    (layers of nested models included; dimensions unknown before the data count 0)."""
    if name.startswith(KERAS_PREFIX):
        name = name.removesuffix(":imagenet")  # the same layers, without fetching weights
    model = models.build_model(name, num_classes, image_shape, taps=list(taps), role=role)

    def outputs(model):
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                yield from outputs(layer)
            else:
                yield sum(math.prod(tensor.shape[1:]) for tensor in keras.tree.flatten(layer.output)
                          if None not in tensor.shape[1:])

    return tuple(outputs(model))


def estimate(config):
    """{(part, what lowers it): bytes} a resolved RunConfig needs (see the module docstring)."""
    info = datasets.get_dataset_info(
        config.dataset, data_dir=config.data_dir, image_size=config.image_size,
        download=config.download, validation_split=config.validation_split, seed=config.seed)
    size = config.image_size or info.image_shape[0]
    image_shape = (size, size, info.image_shape[2])
    pixels = math.prod(image_shape)
    parts = {}
    train, test = info.num_train, info.num_test
    kept_train = min(train, config.take_train or train)
    kept_test = min(test, config.take_test or test)
    if train:
        parts[(f"the images at {size}x{size}", "images")] = (train + test) * pixels
        if image_shape != info.image_shape:
            parts[("the images as read", "images")] = (train + test) * math.prod(info.image_shape)
            parts[("resizing", "images")] = min(RESIZE_CHUNK, train) * pixels * 4
        parts[("the input pipeline", "pipeline")] = (kept_train + kept_test) * pixels \
            + kept_test * pixels * 4
    batch = min(config.batch_size, kept_train) if train else config.batch_size
    value_bytes = 4 if config.mixed_precision == FULL_PRECISION else 2
    student = layer_outputs(config.student, info.num_classes, image_shape,
                            tuple(config.student_taps), "student")
    parts[(f"training the student at batch {batch}", "training")] = \
        sum(student) * batch * value_bytes // 2
    if METHODS.get(config.method).needs_teacher:
        teacher = layer_outputs(config.teacher, info.num_classes, image_shape,
                                tuple(config.teacher_taps), "teacher")
        parts[("the teacher's forward pass", "training")] = 2 * max(teacher) * batch * value_bytes
    return parts


def _amount(size):
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**20:.0f} MiB"


def check_memory(config):
    """Refuse (UserError) a resolved RunConfig that needs more memory than is available,
    with the estimate, its largest parts and the flags that lower them."""
    parts = sorted(estimate(config).items(), key=lambda item: -item[1])
    need, available = sum(size for _, size in parts), available_memory()
    if available is None or need <= available:
        return
    flags = list(dict.fromkeys(flag for (_, kind), _ in parts for flag in _LOWERED_BY[kind]))
    image_size = f"--image_size={config.image_size}, " if config.image_size else ""
    raise UserError(
        f"a run on {config.dataset} ({image_size}--batch_size={config.batch_size}) needs about "
        f"{_amount(need)} of memory, more than the {_amount(available)} available ("
        + ", ".join(f"{part} {_amount(size)}" for (part, _), size in parts)
        + f"); lower {', '.join(flags[:-1])} or {flags[-1]}")
