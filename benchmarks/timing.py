"""Timing helpers: interleaved rounds, so that a load change on a shared machine hits
every candidate alike, and the facts about the machine a table needs."""
import os
import platform
import time

import numpy as np
import tensorflow as tf


def machine():
    """Core count, processor and library versions of this run."""
    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        model = names[0] if names else model
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "processor": model,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
    }


def interleaved(candidates, rounds, warmup):
    """Run every callable of `candidates` ({name: fn}) `warmup` times, then `rounds`
    rounds of one call each, in turn. Each fn must block until its work is done.

    Returns {name: {"wall_s": [...], "cpu_s": [...]}}; cpu_s is the process CPU
    time (all threads), which other processes' load does not inflate.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: {"wall_s": [], "cpu_s": []} for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu_s"].append(time.process_time() - cpu)
            times[name]["wall_s"].append(time.perf_counter() - wall)
    return times


def summary(samples):
    """Median, min and count of a list of seconds."""
    return {"median": float(np.median(samples)), "min": float(np.min(samples)), "n": len(samples)}
