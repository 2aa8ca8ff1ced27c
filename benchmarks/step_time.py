"""Benchmark suite of issue 7: `python -m benchmarks.step_time [--parts ...]`.

Parts (all by default): `steps` (training step per method, benchmarks/steps.py),
`decomposition` (benchmarks/decomposition.py), `memory` (peak memory of a step, each
row in a fresh process: benchmarks/isolated.py), `pipeline` (benchmarks/pipeline.py)
and `xla` (does each method's step compile with jit_compile, how long the compilation
and a step take; fresh processes with a time limit). Prints markdown tables and writes
the numbers as JSON under benchmarks/results/. Ratios come from one process, with the
candidates timed in interleaved rounds (benchmarks/timing.py).
"""
import argparse
import dataclasses
import json
import os
import time

from benchmarks import decomposition, isolated, pipeline, report, timing
from benchmarks import steps as step_cases
from sskd_tf.distill.names import BASELINE, DEFAULT_METHOD
from sskd_tf.linalg import BACKENDS

PARTS = ("steps", "decomposition", "memory", "pipeline", "xla")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MEMORY_LABELS = (step_cases.STUDENT_ONLY, step_cases.WITH_TEACHER,
                 *(f"{DEFAULT_METHOD} [{backend}]" for backend in ("linalg_svd", "gram", "hybrid")),
                 f"{step_cases.SUM_RULE} [gram]")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20,
                        help="measured rounds (training steps, decompositions) after warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", default="",
                        help="comma-separated methods to time in part `steps` (default: all); "
                             "rows (a) and (b) always run")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="KD-SVD family backends to time in part `steps`")
    parser.add_argument("--no_jit", action="store_true", help="skip the XLA rows of part `steps`")
    parser.add_argument("--memory_steps", type=int, default=3)
    parser.add_argument("--xla_batch_size", type=int, default=8)
    parser.add_argument("--xla_timeout", type=float, default=300,
                        help="seconds a row of part `xla` may take (compilation included)")
    parser.add_argument("--xla_backends", default="linalg_svd,gram",
                        help="KD-SVD family backends of part `xla`")
    parser.add_argument("--pipeline_batches", type=int, default=100)
    parser.add_argument("--pipeline_images", type=int, default=50_000,
                        help="training images of the synthetic CIFAR-100")
    parser.add_argument("--output", default=None,
                        help="JSON path (default: benchmarks/results/step_time_<time>.json)")
    parser.add_argument(isolated.CHILD_FLAG, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    return args


def selected_cases(args):
    cases = step_cases.default_cases(tuple(args.backends.split(",")), jit_cases=not args.no_jit)
    if not args.methods:
        return cases
    keep = set(args.methods.split(",")) | {BASELINE, step_cases.TEACHER_FORWARD}
    return [case for case in cases if case.method in keep]


def run_steps(args):
    from sskd_tf import models

    batch = step_cases.synthetic_batch(args.batch_size, 100)
    teacher = models.build_model("resnet32", 100)
    cases = selected_cases(args)
    candidates = {case.label: step_cases.build_step(case, teacher, batch) for case in cases}
    times = timing.interleaved(candidates, args.steps, args.warmup)
    return {case.label: {"method": case.method, "options": dict(case.options), "jit": case.jit,
                         "wall_s": timing.summary(times[case.label]["wall_s"]),
                         "cpu_s": timing.summary(times[case.label]["cpu_s"])}
            for case in cases}


def run_decomposition(args):
    matrices = decomposition.tap_matrices(args.batch_size)
    candidates, errors = {}, {}
    for (m, n), x in zip(decomposition.TAP_MATRICES, matrices):
        for name, (route, jit) in decomposition.ROUTES.items():
            candidates[(m, n, name)] = decomposition.forward_backward(route, x, jit)
            errors[(m, n, name)] = decomposition.component_errors(route, x, jit)
    times = timing.interleaved(candidates, args.steps, args.warmup)
    return [{"matrix": [args.batch_size, m, n], "route": name,
             "fwd_bwd_s": timing.summary(times[(m, n, name)]["wall_s"]),
             "cpu_s": timing.summary(times[(m, n, name)]["cpu_s"]), **errors[(m, n, name)]}
            for (m, n, name) in candidates]


def run_memory(args):
    cases = {case.label: case for case in step_cases.default_cases(jit_cases=False)}
    return {label: isolated.run(cases[label], args.batch_size, args.memory_steps)
            for label in MEMORY_LABELS}


def run_xla(args):
    cases = step_cases.default_cases(tuple(args.xla_backends.split(",")), jit_cases=False)
    return {case.label: isolated.run(dataclasses.replace(case, jit=True), args.xla_batch_size,
                                     steps=2, warmup=1, timeout=args.xla_timeout)
            for case in cases if not step_cases.is_sum_rule(case)}


def run_pipeline(args):
    return pipeline.all_recipes(args.batch_size, args.pipeline_batches, args.pipeline_images)


RUNNERS = {"steps": run_steps, "decomposition": run_decomposition, "memory": run_memory,
           "pipeline": run_pipeline, "xla": run_xla}


def main(argv=None):
    args = parse_args(argv)
    if args.child_case:
        record = isolated.child(isolated.case_from_json(args.child_case), args.batch_size,
                                args.steps, args.warmup)
        print(json.dumps(record))
        return
    results = {"machine": timing.machine(), "settings": vars(args), "started": time.time()}
    for part in args.parts.split(","):
        print(f"running part {part} ...", flush=True)
        results[part] = RUNNERS[part](args)
    results["load_average_1min_at_end"] = timing.machine()["load_average_1min"]
    results["targets"] = report.targets(results)
    print(report.markdown(results))
    output = args.output or os.path.join(
        RESULTS_DIR, time.strftime("step_time_%Y%m%d_%H%M%S.json", time.gmtime()))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as handle:
        json.dump(results, handle, indent=1)
    print(f"saved {output}")


if __name__ == "__main__":
    main()
