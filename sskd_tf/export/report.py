"""export/report.json and report.md: one row per model (Keras, then each LiteRT format)."""
import os

import tensorflow as tf


def build(train_dir, results, settings, options, rows, num_validation, num_representative):
    """The report as a JSON-ready dict."""
    by_format = {row["format"]: row for row in rows}
    drop = 100 * (by_format["float32"]["accuracy"] - by_format["int8"]["accuracy"])
    return {
        "train_dir": train_dir,
        "student": results.get("student"),
        "method": results.get("method"),
        "dataset": settings["dataset"],
        "validation_images": num_validation,
        "representative_samples": num_representative,
        "latency_runs": options.latency_runs,
        "interpreter_threads": options.threads,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "tensorflow": tf.__version__,
        "interpreter": "tf.lite.Interpreter",
        "int8_accuracy_drop": drop,
        "int8_max_accuracy_drop": options.int8_max_accuracy_drop,
        "int8_accuracy_drop_exceeded": drop > options.int8_max_accuracy_drop,
        "rows": rows,
    }


def int8_warning(payload):
    return (f"WARNING: the int8 model's top-1 accuracy is {payload['int8_accuracy_drop']:.2f} "
            f"points below float32's (more than --int8_max_accuracy_drop="
            f"{payload['int8_max_accuracy_drop']:g})")


def markdown(payload):
    lines = [f"# LiteRT export of {payload['train_dir']}", ""]
    if payload["int8_accuracy_drop_exceeded"]:
        lines += [f"**{int8_warning(payload)}**", ""]
    lines += [
        f"Student {payload['student']} ({payload['method']}), dataset {payload['dataset']}: "
        f"{payload['validation_images']} validation images; int8 calibrated on "
        f"{payload['representative_samples']} training images.",
        f"Latency: one image (batch 1), median of {payload['latency_runs']} runs, "
        f"{payload['interpreter']} on {payload['interpreter_threads']} thread(s) (Keras: a "
        f"tf.function); this machine has {payload['cpu_count']} cores, "
        f"{payload['cpus_available']} available to the process. TensorFlow "
        f"{payload['tensorflow']}.",
        "",
        "| model | file | size (KiB) | top-1 accuracy (%) | top-1 agreement with Keras (%) "
        "| max abs logit diff | latency (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {row['format']} | {row['file']} | {row['size_bytes'] / 1024:.1f} "
              f"| {100 * row['accuracy']:.2f} | {100 * row['agreement']:.2f} "
              f"| {row['max_abs_logit_difference']:.2g} | {row['latency_ms']:.3f} |"
              for row in payload["rows"]]
    verdict = ("more than" if payload["int8_accuracy_drop_exceeded"] else "within")
    lines += ["", f"int8 accuracy drop against float32: {payload['int8_accuracy_drop']:.2f} "
              f"points, {verdict} the allowed {payload['int8_max_accuracy_drop']:g}."]
    return "\n".join(lines) + "\n"
