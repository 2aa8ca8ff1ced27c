"""One training-step row run alone in a fresh Python process (parts `memory` and `xla`).

The child builds the row, times its first step (tracing, and XLA compilation with
jit) and its next steps, and reads its memory from the kernel:
`tf.config.experimental.get_memory_info` has no statistics for the CPU device, so
after warm-up the child records its resident set between steps, resets the
high-water mark (`/proc/self/clear_refs`, Linux >= 4.0), runs the measured steps and
reads the new mark (VmHWM). The step's own memory is the difference. The mark before
the reset (building, tracing and warm-up included) is kept as the process peak;
`getrusage().ru_maxrss` is not used because Linux carries it over `execve`, so a
child would report its parent's peak.
"""
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import steps as step_cases
from sskd_tf import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_FLAG = "--child_case"


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
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    return {"first_step_s": first_step, "step_s": float(np.median(times)),
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
                                   timeout=timeout)
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
