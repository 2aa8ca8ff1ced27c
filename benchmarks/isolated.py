"""One training-step row run alone in a fresh Python process (parts `memory` and `xla`).

The child builds the row, times its first step (tracing, and XLA compilation with
jit) and its next steps, and measures its memory two ways after warm-up:
- tensors: the child runs with TensorFlow's BFC allocator on the CPU
  (TF_CPU_ALLOCATOR_USE_BFC), whose statistics `tf.config.experimental.get_memory_info`
  reads; the peak is reset before the measured steps. Exact and repeatable: the
  number the targets use.
- resident set: the kernel's high-water mark (VmHWM) after a reset through
  `/proc/self/clear_refs` (Linux >= 4.0). It includes the runtime, the allocator's
  cached free blocks and the code, and moves by +-15% from run to run.
  `getrusage().ru_maxrss` is not used: Linux carries it over `execve`.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from benchmarks import steps as step_cases
from sskd_tf import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_FLAG = "--child_case"
DEVICE = "CPU:0"
MIB = 2 ** 20


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(case, batch_size, steps, warmup):
    """Run in the child: build `case`, step, and return its record (seconds, MiB)."""
    batch = step_cases.synthetic_batch(batch_size, 100)
    teacher = models.build_model("resnet32", 100)
    step = step_cases.build_step(case, teacher, batch)
    start = time.perf_counter()
    step()
    first_step = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    process_peak = _status_kib("VmHWM")
    between_steps = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    tensors_between_steps = tf.config.experimental.get_memory_info(DEVICE)["current"]
    tf.config.experimental.reset_memory_stats(DEVICE)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    tensor_peak = tf.config.experimental.get_memory_info(DEVICE)["peak"]
    return {"first_step_s": first_step, "step_s": float(np.median(times)),
            "tensor_peak_mib": tensor_peak / MIB,
            "tensor_increment_mib": (tensor_peak - tensors_between_steps) / MIB,
            "rss_between_steps_mib": between_steps / 1024, "step_peak_mib": peak / 1024,
            "step_increment_mib": (peak - between_steps) / 1024,
            "process_peak_mib": max(process_peak, peak) / 1024}


def run(case, batch_size, steps=3, warmup=2, timeout=None):
    """The record of `case` from a fresh Python process; {"error": ...} when the child
    fails or outlives `timeout` seconds."""
    command = [sys.executable, "-m", "benchmarks.step_time", CHILD_FLAG,
               json.dumps(dataclasses.asdict(case)), "--batch_size", str(batch_size),
               "--steps", str(steps), "--warmup", str(max(warmup, 1))]
    try:
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                   timeout=timeout,
                                   env={**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true"})
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout} s"}
    if completed.returncode:
        lines = [line for line in completed.stderr.splitlines() if "Error" in line]
        return {"error": (lines or completed.stderr.splitlines() or ["failed"])[-1][:300]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def case_from_json(text):
    fields = json.loads(text)
    fields["options"] = tuple(tuple(option) for option in fields["options"])
    return step_cases.StepCase(**fields)
