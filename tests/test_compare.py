"""`--mode=compare` on a tiny slice of digits: one teacher, the tables and the plot,
reuse of finished runs, the self_distill exits, and the flags."""
import copy
import csv
import dataclasses
import math
import os
import shutil

import pytest
from absl import flags as absl_flags

import flags  # noqa: F401  (defines the flags of main.py)
from sskd_tf import compare_report
from sskd_tf.errors import UserError
from sskd_tf.modes import compare as compare_mode
from sskd_tf.modes.run_config import config_from_flags
from sskd_tf.training.config import RunConfig

from conftest import TINY
from main_cli import main_errors

METHODS = ["none", "svd"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compared(tmp_path_factory, teacher_run):
    """A comparison of METHODS over 2 seeds, with the session's teacher as its cached one
    (a comparison trains its teacher as a run does: tests/test_training_run.py)."""
    train_dir = str(tmp_path_factory.mktemp("compare"))
    shutil.copytree(teacher_run, os.path.join(train_dir, "teacher"))
    base = RunConfig(train_dir=train_dir, **TINY)
    rows = compare_mode.compare(base, METHODS, seeds=2)
    return base, rows


def snapshot(train_dir):
    """Every directory under train_dir, and the mtime of every results.json."""
    dirs, mtimes = set(), {}
    for path, names, files in os.walk(train_dir):
        dirs.update(os.path.join(path, name) for name in names)
        if "results.json" in files:
            mtimes[path] = os.path.getmtime(os.path.join(path, "results.json"))
    return dirs, mtimes


def read_csv(root):
    with open(os.path.join(root, "results.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_method_and_seed_is_a_run(compared):
    base, _ = compared
    root = os.path.join(base.train_dir, "compare")
    for method in METHODS:
        assert sorted(os.listdir(os.path.join(root, method))) == ["seed0", "seed1"]
        for seed in (0, 1):
            assert os.path.exists(os.path.join(root, method, f"seed{seed}", "results.json"))


def test_one_teacher_serves_every_run(compared):
    base, _ = compared
    dirs, _ = snapshot(base.train_dir)
    assert [d for d in dirs if os.path.basename(d) == "teacher"] == [
        os.path.join(base.train_dir, "teacher")]
    assert os.path.exists(os.path.join(base.train_dir, "teacher", "results.json"))


def test_the_tables_hold_one_row_per_method(compared):
    base, rows = compared
    root = os.path.join(base.train_dir, "compare")
    assert [row["method"] for row in rows] == METHODS
    table = read_csv(root)
    assert [row["method"] for row in table] == METHODS
    assert tuple(table[0]) == compare_report.CSV_COLUMNS
    for row in table:
        assert row["seeds"] == "2" and row["epochs"] == "1"
        values = [float(row[column]) for column in compare_report.CSV_COLUMNS[3:]]
        assert all(math.isfinite(v) for v in values)
        last, best = float(row["last_val_accuracy_mean"]), float(row["best_val_accuracy_mean"])
        assert 0.0 <= last <= best <= 1.0
        assert float(row["step_time_s"]) > 0
    with open(os.path.join(root, "results.md")) as handle:
        markdown = handle.read()
    assert "Teacher resnet8: validation accuracy" in markdown
    for method in METHODS:
        assert sum(line.startswith(f"| {method} | 2 | 1 |") for line in markdown.splitlines()) == 1
    with open(os.path.join(root, "val_accuracy.png"), "rb") as handle:
        assert handle.read(8) == PNG_MAGIC


def test_a_verbose_comparison_ends_by_printing_its_table(compared, capsys):
    base, _ = compared
    compare_mode.compare(dataclasses.replace(base, verbose=1), METHODS, seeds=2)
    printed = capsys.readouterr().out
    with open(os.path.join(base.train_dir, "compare", "results.md")) as handle:
        table = handle.read()
    assert "| none | 2 |" in table and printed.endswith(table)
    assert printed.count("Reusing the finished run") == 4


def test_a_rerun_reuses_finished_runs_and_trains_the_missing_one(compared):
    base, rows = compared
    missing = os.path.join(base.train_dir, "compare", "svd", "seed1")
    shutil.rmtree(missing)
    dirs, mtimes = snapshot(base.train_dir)
    rerun = compare_mode.compare(base, METHODS, seeds=2)
    new_dirs, new_mtimes = snapshot(base.train_dir)
    assert {d for d in new_dirs - dirs if not d.startswith(missing + os.sep)} == {missing}
    assert {path: new_mtimes[path] for path in mtimes} == mtimes
    assert missing in new_mtimes
    assert rerun[0] == rows[0]


def test_a_finished_run_of_other_settings_is_an_error(compared):
    base, _ = compared
    with pytest.raises(ValueError, match="holds a run of other settings: epochs 1 \\(asked: 2\\).*--overwrite"):
        compare_mode.compare(dataclasses.replace(base, epochs=2), ["none"], seeds=1)


def test_method_options_that_do_not_fit_fail_before_training(tmp_path):
    base = RunConfig(train_dir=str(tmp_path), **TINY)
    with pytest.raises(ValueError, match="do not fit at"):
        compare_mode.compare(base, ["at"], seeds=1, options={"at": {"no_such_option": 1}})
    assert not os.listdir(tmp_path)


def test_method_options_go_to_the_methods_that_take_them_with_their_flags():
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", "--method_options=init_epochs=0,beta=10", "--svd_gradient=exact",
                 "--project_student"])
    options = compare_mode.options_per_method(flag_values, ["at", "fitnet", "eid"])
    assert options["at"] == {"beta": 10} and options["fitnet"] == {"init_epochs": 0}
    flag_values.method = "eid"
    flag_values.method_options = []
    assert options["eid"] == config_from_flags(flag_values).method_options
    assert options["eid"]["gradient"] == "exact" and options["eid"]["project_student"] is True
    flag_values.method_options = ["no_such_option=1"]
    with pytest.raises(UserError, match="no method of --methods takes no_such_option"):
        compare_mode.options_per_method(flag_values, ["at", "fitnet"])


def test_step_time_takes_the_training_time_from_the_history(tmp_path):
    config = RunConfig(train_dir=str(tmp_path), **TINY)
    results = {"wall_time_s": 30.0, "epochs": 3}
    # Without a history: the wall time over the run's steps, int(3 * 128 / 64) + 1 = 7 on
    # the authors' epoch cut.
    assert compare_report.step_time(config, results) == pytest.approx(30.0 / 7)
    with open(tmp_path / "history.csv", "w") as handle:
        handle.write("epoch,steps,train_time_s,val_accuracy\n0,2,9.0,0.1\n1,2,2.0,0.2\n"
                     "2,3,3.0,0.3\n")
    # The median over epochs of time / steps: 4.5, 1.0, 1.0.
    assert compare_report.step_time(config, results) == pytest.approx(1.0)


def test_the_best_of_the_mean_curve_is_reported_beside_the_mean_of_per_run_bests(tmp_path):
    curves = [[0.50, 0.80, 0.60], [0.60, 0.70, 0.75], [0.70, 0.60, 0.50]]
    results = [{"val_accuracy": curve, "last_val_accuracy": curve[-1],
                "best_val_accuracy": max(curve), "epochs": 3, "wall_time_s": 6.0,
                "teacher_val_accuracy": None} for curve in curves]
    base = RunConfig(train_dir=str(tmp_path), **TINY)
    row = compare_report.summary_row("none", [base] * 3, results)
    # Mean curve by hand: 1.80 / 3, 2.10 / 3, 1.85 / 3 -> best 0.70 at epoch 2.
    # Per-run bests 0.80, 0.75, 0.70 -> 0.75; lasts 0.60, 0.75, 0.50 -> 0.616...
    assert row["mean_curve_best_val_accuracy"] == pytest.approx(0.70)
    assert row["mean_curve_best_epoch"] == 2
    assert row["best_val_accuracy_mean"] == pytest.approx(0.75)
    assert row["last_val_accuracy_mean"] == pytest.approx(1.85 / 3)
    compare_report.write_outputs(str(tmp_path), base, [row], {"none": results}, {})
    table = read_csv(str(tmp_path))[0]
    assert float(table["mean_curve_best_val_accuracy"]) == pytest.approx(0.70)
    assert table["mean_curve_best_epoch"] == "2"
    with open(tmp_path / "results.md") as handle:
        lines = handle.read().splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    assert "| mean of per-run bests | best of the mean curve (epoch) |" in header
    assert next(line for line in lines if line.startswith("| none |")).startswith(
        "| none | 3 | 3 | 61.67 ± 12.58 | 75.00 ± 5.00 | 70.00 (2) |")


def test_self_distill_reports_every_exit(tmp_path):
    base = RunConfig(train_dir=str(tmp_path), **TINY)
    compare_mode.compare(base, ["self_distill"], seeds=1)
    assert not os.path.exists(tmp_path / "teacher")
    with open(tmp_path / "compare" / "results.md") as handle:
        lines = handle.read().splitlines()
    start = lines.index("## self_distill: every exit (last checkpoint)")
    exits = [line.split(" | ") for line in lines[start + 4:] if line.startswith("| ")]
    assert [row[0] for row in exits] == ["| 0", "| 1", "| full"]
    flops = [float(row[1]) for row in exits]
    assert flops == sorted(flops) and exits[-1][2] == "1.00"
    full_accuracy = float(read_csv(tmp_path / "compare")[0]["last_val_accuracy_mean"])
    assert float(exits[-1][3].rstrip(" |")) == pytest.approx(100 * full_accuracy, abs=0.005)


def test_the_flags_reach_the_comparison(monkeypatch):
    calls = []
    monkeypatch.setattr(compare_mode, "compare", lambda *args: calls.append(args))
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", "--mode=compare", "--methods=none,svd", "--seeds=2", "--seed=5",
                 "--svd_gradient=exact", "--train_dir=elsewhere", "--epochs=3"])
    compare_mode.run(flag_values)
    (base, methods, seeds, options), = calls
    assert (base.train_dir, base.seed, base.epochs) == ("elsewhere", 5, 3)
    assert (methods, seeds) == (["none", "svd"], 2)
    assert options["none"] == {}
    assert options["svd"]["gradient"] == "exact" and options["svd"]["project_student"] is False


BAD_COMMANDS = [
    (["--mode=compare", "--methods=at", "--method_options=nope=1"],
     "no method of --methods takes nope"),
    (["--mode=compare", "--methods=at,svd", "--method_options=beta=-1"],
     "do not fit at: at: beta=-1.0 is out of range (at least 0)"),
    (["--mode=compare", "--methods=svd,nope"], "unknown method nope"),
    (["--mode=compare", "--methods=svd,svd"], "listed twice"),
    (["--mode=compare", "--seeds=0"], "--seeds"),
]


def test_bad_compare_commands_fail_in_one_line(tmp_path):
    errors = main_errors(*[argv + [f"--train_dir={tmp_path}"] for argv, _ in BAD_COMMANDS])
    for (argv, message), (error, _) in zip(BAD_COMMANDS, errors):
        assert message in error, argv
    assert not os.listdir(tmp_path)
