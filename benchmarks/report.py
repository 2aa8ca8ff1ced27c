"""The markdown tables and the issue-7 targets, from the results of benchmarks.step_time."""
from benchmarks.steps import STUDENT_ONLY, SUM_RULE, WITH_TEACHER

TARGETS = {
    "kd_svd_gram_over_b": ("KD-SVD [gram] step / (b)", 1.10, "<="),
    "kd_svd_linalg_svd_over_b": ("KD-SVD [linalg_svd] step / (b)", 1.30, "<="),
    "kd_svd_hybrid_over_b": ("KD-SVD [hybrid] step / (b) (the svd loss: its target)", 1.30,
                             "<="),
    "decomposition_share": ("gram decomposition fwd+bwd, 3 taps / KD-SVD [gram] step", 0.05, "<="),
    "pipeline_over_training": ("pipeline images/s / training images/s (row a, slowest recipe)",
                               5.0, ">="),
    "memory_peak_over_b": ("KD-SVD step tensor peak / (b) tensor peak (worst backend)", 1.5,
                           "<="),
}
# The memory the targets compare: the allocator's peak of live tensors in a step.
PEAK = "tensor_peak_mib"


def _median(results, label):
    row = results.get("steps", {}).get(label)
    return row["wall_s"]["median"] if row else None


def derived(results):
    """The measured quantity of every target that the parts run allow."""
    values = {}
    b = _median(results, WITH_TEACHER)
    for backend in ("gram", "hybrid", "linalg_svd"):
        step = _median(results, f"svd [{backend}]")
        if b and step:
            values[f"kd_svd_{backend}_over_b"] = step / b
        summed = _median(results, f"{SUM_RULE} [{backend}]")
        if b and summed:
            values[f"sum_rule_{backend}_over_b"] = summed / b
        if step and summed:
            values[f"clip_rule_share_{backend}"] = (step - summed) / step
    gram_step = _median(results, "svd [gram]")
    rows = results.get("decomposition", [])
    gram_rows = [row["fwd_bwd_s"]["median"] for row in rows if row["route"] == "gram"]
    if gram_step and gram_rows:
        values["decomposition_share"] = sum(gram_rows) / gram_step
    student_step = _median(results, STUDENT_ONLY)
    if student_step and results.get("pipeline"):
        training = results["settings"]["batch_size"] / student_step
        values["pipeline_over_training"] = min(
            row["images_per_s"] for row in results["pipeline"]) / training
    peaks = results.get("memory", {})
    if PEAK in peaks.get(WITH_TEACHER, {}):
        kd_peaks = [row[PEAK] for label, row in peaks.items()
                    if label.startswith("svd [") and PEAK in row]
        if kd_peaks:
            values["memory_peak_over_b"] = max(kd_peaks) / peaks[WITH_TEACHER][PEAK]
    return values


def targets(results):
    """{target: {"value", "limit", "met"}} for the targets the run measured, plus the
    diagnostic ratios (clip-rule share)."""
    values = derived(results)
    out = {}
    for key, value in values.items():
        if key in TARGETS:
            _, limit, sense = TARGETS[key]
            met = value <= limit if sense == "<=" else value >= limit
            out[key] = {"value": value, "limit": limit, "met": met}
        else:
            out[key] = {"value": value}
    return out


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _steps_table(results):
    steps = results["steps"]
    a, b = _median(results, STUDENT_ONLY), _median(results, WITH_TEACHER)
    rows = []
    for label, row in steps.items():
        median = row["wall_s"]["median"]
        rows.append([label, f"{median:.3f}", f"{row['wall_s']['min']:.3f}",
                     f"{row['cpu_s']['median']:.2f}", f"{median / a:.2f}" if a else "-",
                     f"{median / b:.2f}" if b else "-"])
    return _table(["step", "median s", "min s", "CPU s", "/ (a)", "/ (b)"], rows)


def _decomposition_table(results):
    gram_step = _median(results, "svd [gram]")
    rows = []
    for row in results["decomposition"]:
        median = row["fwd_bwd_s"]["median"]
        share = f"{100 * median / gram_step:.1f}%" if gram_step else "-"
        rows.append(["x".join(map(str, row["matrix"])), row["route"], f"{median:.4f}", share,
                     f"{row['s_error']:.1e}", f"{row['v_error']:.1e}"])
    return _table(["matrix", "route", "fwd+bwd s", "of svd [gram] step", "s error", "v error"],
                  rows)


def _memory_table(results):
    peaks = results["memory"]
    b = peaks.get(WITH_TEACHER, {})
    rows = []
    for label, row in peaks.items():
        if "error" in row:
            rows.append([label, row["error"], "", "", "", ""])
            continue
        ratio = f"{row[PEAK] / b[PEAK]:.2f}" if PEAK in b else "-"
        rows.append([label, f"{row[PEAK]:.0f}", f"{row['tensor_increment_mib']:.0f}", ratio,
                     f"{row['step_peak_mib']:.0f}", f"{row['process_peak_mib']:.0f}"])
    return _table(["step", "tensor peak MiB", "of which made by the step", "peak / (b)",
                   "resident peak MiB", "process resident peak MiB"], rows)


def _xla_table(results):
    rows = []
    for label, row in results["xla"].items():
        if "error" in row:
            rows.append([label, "-", "-", row["error"]])
        else:
            rows.append([label, f"{row['first_step_s']:.1f}", f"{row['step_s']:.3f}", "runs"])
    batch = results["settings"]["xla_batch_size"]
    return _table(["jit_compile step", "first step s (compile)", f"step s (batch {batch})",
                   "result"], rows)


def _pipeline_table(results):
    batch = results["settings"]["batch_size"]
    training = {label: batch / _median(results, label)
                for label in (STUDENT_ONLY, "svd [linalg_svd]", "svd [gram]") if _median(results, label)}
    rows = [[row["recipe"], f"{row['images_per_s']:.0f}", f"{row['cpu_s_per_batch']:.3f}"]
            + [f"{row['images_per_s'] / rate:.1f}x" for rate in training.values()]
            for row in results["pipeline"]]
    header = ["recipe", "images/s", "CPU s/batch"] + [f"vs {label} training"
                                                      for label in training]
    return _table(header, rows) + "\n\nTraining images/s: " + ", ".join(
        f"{label} {rate:.1f}" for label, rate in training.items())


def _targets_table(results):
    rows = []
    for key, target in results["targets"].items():
        if key in TARGETS:
            name, limit, sense = TARGETS[key]
            rows.append([name, f"{target['value']:.3f}", f"{sense} {limit}",
                         "met" if target["met"] else "MISSED"])
        else:
            rows.append([key, f"{target['value']:.3f}", "(diagnostic)", ""])
    return _table(["target", "measured", "limit", ""], rows)


def markdown(results):
    m = results["machine"]
    parts = [f"Machine: {m['cores']} cores ({m['usable_cores']} usable), {m['processor']}, "
             f"TensorFlow {m['tensorflow']}; batch {results['settings']['batch_size']}; "
             f"load average {m['load_average_1min']:.1f} at start, "
             f"{results['load_average_1min_at_end']:.1f} at end."]
    for key, render in (("steps", _steps_table), ("decomposition", _decomposition_table),
                        ("memory", _memory_table), ("pipeline", _pipeline_table),
                        ("xla", _xla_table),
                        ("targets", _targets_table)):
        if results.get(key):
            parts.append(render(results))
    return "\n\n".join(parts)
