"""`--mode=tune` (issue 6): a keras-tuner search on a tiny slice of digits, its
results, its resumption, its HParams logs and its flags."""
import csv
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from flags import tune as tune_flags
from sskd_tf import tuning
from sskd_tf.data import digits
from sskd_tf.distill import METHODS
from sskd_tf.training.config import RunConfig

from main_cli import REPO, main_error

TINY = dict(teacher="resnet8", student="resnet8", dataset="digits", image_size=8, batch_size=64,
            take_train=128, take_test=64, epochs=1, verbose=0, method="svd",
            method_options={"gradient": "original", "project_student": False})
SVD_SPACE = ["weight", "clip_scale", "teacher_components", "student_extra_components",
             "rbf_width"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    train_dir = str(tmp_path_factory.mktemp("search"))
    rows = tuning.search(RunConfig(train_dir=train_dir, **TINY), tuner="random", max_trials=2,
                         epochs=1)
    return train_dir, rows


def _trial_ids(train_dir):
    return sorted(os.path.basename(path)
                  for path in glob.glob(os.path.join(train_dir, "tune", "trial_*")))


def _trial_files(train_dir):
    paths = glob.glob(os.path.join(train_dir, "tune", "trial_*", "*"))
    return {path: os.path.getmtime(path) for path in paths}


def _hparams_events(event_dir):
    """{tag: [HParamsPluginData]} of the hparams summaries in one run directory."""
    found = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    found.setdefault(value.tag, []).append(
                        plugin_data_pb2.HParamsPluginData.FromString(
                            value.metadata.plugin_data.content))
    return found


def _parse_flagfile(path):
    """main.py's flags after `--flagfile=path`, parsed by main.parse_flags in a
    fresh interpreter (so that the test's own flag state is untouched)."""
    code = ("import json, sys, main; from absl import flags; main.parse_flags(sys.argv); "
            "print(json.dumps({k: v for k, v in flags.FLAGS.flag_values_dict().items() "
            "if k in ('mode', 'method', 'method_options', 'teacher', 'student', 'dataset', "
            "'recipe', 'epochs', 'batch_size', 'learning_rate', 'lr_decay_points', "
            "'weight_decay', 'teacher_weights', 'train_dir', 'seed', 'svd_gradient', "
            "'project_student')}))")
    done = subprocess.run([sys.executable, "-c", code, f"--flagfile={path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_random_search_runs_its_trials_and_ranks_them(searched):
    train_dir, rows = searched
    assert os.path.exists(os.path.join(train_dir, "teacher", "results.json"))
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    scores = [row["val_accuracy"] for row in rows]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert all(set(SVD_SPACE) <= set(row) for row in rows)
    assert rows[0]["weight"] != rows[1]["weight"]


def test_the_table_is_written_as_csv_and_markdown(searched):
    train_dir, rows = searched
    with open(os.path.join(train_dir, "tune", "trials.csv"), newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["trial"] for row in table] == [row["trial"] for row in rows]
    assert [float(row["val_accuracy"]) for row in table] == [row["val_accuracy"] for row in rows]
    assert [float(row["weight"]) for row in table] == [row["weight"] for row in rows]
    with open(os.path.join(train_dir, "tune", "trials.md")) as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("| trial | status | val_accuracy | best_epoch | weight")
    assert len(lines) == 2 + len(rows)


def test_the_best_trial_is_a_flagfile_that_main_accepts(searched):
    train_dir, rows = searched
    best = rows[0]
    flagfile = os.path.join(train_dir, "tune", "best.flags")
    with open(flagfile) as handle:
        lines = handle.read().splitlines()
    assert "--mode=train" in lines and "--mode=tune" not in lines
    assert "--svd_gradient=original" in lines and "--noproject_student" in lines
    values = _parse_flagfile(flagfile)
    assert values["mode"] == "train" and values["method"] == "svd"
    assert values["svd_gradient"] == "original" and values["project_student"] is False
    options = dict(item.split("=", 1) for item in values["method_options"])
    assert sorted(options) == sorted(SVD_SPACE)
    for name in SVD_SPACE:
        assert float(options[name]) == pytest.approx(best[name], rel=1e-12)
    assert (values["teacher"], values["student"], values["dataset"]) == ("resnet8", "resnet8",
                                                                         "digits")
    assert values["recipe"] == "kd_methods" and values["epochs"] == 1
    assert values["batch_size"] == 64
    assert values["learning_rate"] == digits.RUN_DEFAULTS["learning_rate"]
    assert values["teacher_weights"] == os.path.join(train_dir, "teacher", "student.keras")
    assert os.path.exists(values["teacher_weights"])
    assert values["train_dir"] == os.path.join(train_dir, "best")


def test_the_hparams_logs_hold_the_experiment_and_every_trial(searched):
    train_dir, rows = searched
    hparams_dir = os.path.join(train_dir, "tune", "hparams")
    experiment = _hparams_events(hparams_dir)["_hparams_/experiment"][-1].experiment
    assert [info.name for info in experiment.hparam_infos] == SVD_SPACE
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert ("validation", "epoch_accuracy") in metrics
    for row in rows:
        run_dir = os.path.join(hparams_dir, row["trial"], "execution0")
        start = _hparams_events(run_dir)["_hparams_/session_start_info"][0].session_start_info
        assert start.hparams["weight"].number_value == pytest.approx(row["weight"])
        assert glob.glob(os.path.join(run_dir, "validation", "events.out.tfevents.*"))


def test_a_rerun_resumes_and_more_trials_continue_the_search(searched, tmp_path):
    train_dir = str(tmp_path / "copy")
    shutil.copytree(searched[0], train_dir)
    before = _trial_files(train_dir)
    config = RunConfig(train_dir=train_dir, **TINY)
    rows = tuning.search(config, tuner="random", max_trials=2, epochs=1)
    assert _trial_files(train_dir) == before
    assert [(r["trial"], r["weight"]) for r in rows] == [(r["trial"], r["weight"])
                                                        for r in searched[1]]
    rows = tuning.search(config, tuner="random", max_trials=3, epochs=1)
    assert _trial_ids(train_dir) == ["trial_0", "trial_1", "trial_2"]
    assert {path: _trial_files(train_dir)[path] for path in before} == before
    assert len(rows) == 3 and all(row["status"] == "COMPLETED" for row in rows)


def test_a_search_with_other_settings_needs_overwrite(searched):
    config = RunConfig(train_dir=searched[0], **TINY)
    with pytest.raises(ValueError, match="other settings.*tune_epochs.*--overwrite"):
        tuning.search(config, tuner="random", max_trials=2, epochs=3)


def test_fixed_method_options_leave_the_search_space(tmp_path):
    config = RunConfig(method="svd", method_options={"weight": 2.0, "gradient": "exact"})
    hp = tuning.search_space(config)
    assert hp.values["weight"] == 2.0
    assert tuning.tuned_names(hp) == [name for name in SVD_SPACE if name != "weight"]
    nothing_left = RunConfig(**{**TINY, "train_dir": str(tmp_path), "method_options": {
        name: 1 for name in SVD_SPACE}})
    with pytest.raises(ValueError, match="--method_options fixes all of weight, clip_scale"):
        tuning.search(nothing_left)


def test_a_method_without_a_search_space_is_refused(tmp_path):
    assert not tuning.tuned_names(tuning.search_space(RunConfig(method="none")))
    with pytest.raises(ValueError, match="--method=none leaves nothing to search: it declares no"):
        tuning.search(RunConfig(**{**TINY, "method": "none", "train_dir": str(tmp_path)}))
    assert not os.path.exists(os.path.join(str(tmp_path), "teacher"))


def test_every_method_but_none_declares_a_search_space():
    for name in METHODS.names():
        if name != "none":
            assert tuning.tuned_names(tuning.search_space(RunConfig(method=name))), name


def test_the_tuner_flag_lists_the_tuners_of_the_module():
    assert tuple(tune_flags.TUNERS) == tuple(tuning.TUNERS)


@pytest.mark.parametrize("flag, message", [
    ("--tuner=bogus", "value should be one of <random|bayesian|hyperband>"),
    ("--max_trials=0", "--max_trials"),
    ("--tune_epochs=0", "--tune_epochs"),
])
def test_bad_tune_flags_fail_at_parsing_with_one_line(flag, message):
    error, done = main_error("--mode=tune", flag, timeout=120)
    assert len(done.stderr.strip().splitlines()) == 1 and message in error


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url, payload=None, timeout=30):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_scalars_and_the_hparams_of_a_search(searched):
    """TensorBoard itself (not the summary reader), on 127.0.0.1, over the whole run
    directory: the teacher's run and the search."""
    train_dir, rows = searched
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", train_dir, "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=false", "--reload_interval=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, server.stderr.read()[-2000:]
            try:
                tags = _get_json(f"{base}/scalars/tags")
                if "teacher/logs/validation" in tags and len(tags) > 2 + len(rows):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.time() < deadline, "TensorBoard did not serve the run in time"
            time.sleep(1)
        served = _get_json(f"{base}/scalars/scalars?run=teacher/logs/validation&tag=epoch_accuracy")
        with open(os.path.join(train_dir, "teacher", "history.csv"), newline="") as handle:
            history = [float(row["val_accuracy"]) for row in csv.DictReader(handle)]
        assert [step for _, step, _ in served] == list(range(len(history)))
        assert [value for _, _, value in served] == pytest.approx(history, abs=1e-6)

        experiment = _get_json(f"{base}/hparams/experiment", {"experimentName": ""})
        assert sorted(info["name"] for info in experiment["hparamInfos"]) == sorted(SVD_SPACE)
        groups = _get_json(f"{base}/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                "STATUS_RUNNING"],
            "colParams": [{"hparam": name} for name in SVD_SPACE]})
        weights = sorted(group["hparams"]["weight"] for group in groups["sessionGroups"])
        assert weights == pytest.approx(sorted(row["weight"] for row in rows))
    finally:
        server.terminate()
        server.wait(timeout=60)



KILL_ARGS = ["--mode=tune", "--method=svd", "--teacher=resnet8", "--student=resnet8",
             "--dataset=digits", "--image_size=8", "--batch_size=64", "--take_train=128", "--take_test=64",
             "--epochs=1", "--svd_gradient=original", "--noproject_student", "--tuner=random",
             "--max_trials=2", "--tune_epochs=1", "--seed=1", "--deterministic"]


def _trials_json(train_dir):
    """{trial id: (status, score, hyperparameter values, every metric's observations)}."""
    trials = {}
    for path in glob.glob(os.path.join(train_dir, "tune", "trial_*", "trial.json")):
        with open(path) as handle:
            trial = json.load(handle)
        trials[trial["trial_id"]] = (trial["status"], trial["score"],
                                     trial["hyperparameters"]["values"], trial["metrics"])
    return trials


def _tail(path):
    with open(path) as handle:
        return handle.read()[-3000:]


def test_a_search_killed_during_a_trial_resumes_with_the_same_trials(searched, tmp_path):
    """SIGKILL once the second trial trains; the same command again retries that trial
    with its hyperparameters and ends as an uninterrupted search run beside it: same
    trials, values, losses and best trial (both --seed --deterministic, in the
    teacher's cache of the module's search)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    runs = {}
    try:
        for name in ("uninterrupted", "killed"):
            train_dir = str(tmp_path / name)
            shutil.copytree(os.path.join(searched[0], "teacher"),
                            os.path.join(train_dir, "teacher"))
            command = [sys.executable, "main.py", *KILL_ARGS, f"--train_dir={train_dir}"]
            with open(tmp_path / f"{name}.err", "w") as stderr:
                runs[name] = train_dir, command, subprocess.Popen(
                    command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        train_dir, command, process = runs["killed"]
        training = os.path.join(train_dir, "tune", "hparams", "1", "execution0", "train")
        deadline = time.time() + 900
        while not glob.glob(os.path.join(training, "events.out.tfevents.*")):
            assert process.poll() is None, _tail(tmp_path / "killed.err")
            assert time.time() < deadline, "the second trial did not start training"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
        assert _trials_json(train_dir)["1"][0] == "RUNNING"
        assert not os.path.exists(os.path.join(train_dir, "tune", "best.flags"))
        resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        reference_dir, _, reference = runs["uninterrupted"]
        assert reference.wait(timeout=900) == 0, _tail(tmp_path / "uninterrupted.err")
    finally:
        for _, _, running in runs.values():
            if running.poll() is None:
                running.kill()
                running.wait()

    expected = _trials_json(reference_dir)
    assert sorted(expected) == ["0", "1"]
    assert _trials_json(train_dir) == expected
    assert all(status == "COMPLETED" for status, *_ in expected.values())
    tables = []
    for directory in (reference_dir, train_dir):
        with open(os.path.join(directory, "tune", "trials.csv")) as handle:
            tables.append(handle.read())
    assert tables[0] == tables[1]
    top = next(csv.DictReader(tables[0].splitlines()))
    assert (f"Best of 2 completed trials: trial {top['trial']}, val_accuracy "
            f"{float(top['val_accuracy']):.4f}") in resumed.stdout


def test_a_trial_killed_after_reporting_its_metrics_is_scored_by_its_rerun_only(searched,
                                                                                 tmp_path):
    """The files a kill leaves between a trial's report and its end (trial.json RUNNING
    with metrics, oracle.json with the trial ongoing), the report made implausible
    (val_accuracy 2): the rerun scores the trial by its own report alone."""
    train_dir = str(tmp_path / "copy")
    shutil.copytree(searched[0], train_dir)
    tune_dir = os.path.join(train_dir, "tune")
    trial_path = os.path.join(tune_dir, "trial_1", "trial.json")
    with open(trial_path) as handle:
        trial = json.load(handle)
    trial["status"], trial["score"] = "RUNNING", None
    for metric in trial["metrics"]["metrics"].values():
        metric["observations"] = [{"value": [2.0], "step": 0}]
    with open(trial_path, "w") as handle:
        json.dump(trial, handle)
    oracle_path = os.path.join(tune_dir, "oracle.json")
    with open(oracle_path) as handle:
        oracle = json.load(handle)
    oracle.update(ongoing_trials={"tuner0": "1"}, end_order=["0"], run_times={"0": 1})
    with open(oracle_path, "w") as handle:
        json.dump(oracle, handle)

    rows = tuning.search(RunConfig(train_dir=train_dir, **TINY), tuner="random", max_trials=2,
                         epochs=1)
    rerun = {row["trial"]: row for row in rows}["1"]
    assert rerun["status"] == "COMPLETED" and 0.0 <= rerun["val_accuracy"] <= 1.0
    with open(trial_path) as handle:
        metrics = json.load(handle)["metrics"]["metrics"]
    assert [obs["value"] for obs in metrics["val_accuracy"]["observations"]] == [
        [rerun["val_accuracy"]]]
    assert all(len(obs["value"]) == 1 for metric in metrics.values()
               for obs in metric["observations"])
