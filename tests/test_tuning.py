"""`--mode=tune` (issue 6): a keras-tuner search on a tiny slice of digits, its
results, its resumption, its HParams logs and its flags."""
import copy
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

import keras_tuner as kt
import pytest
import tensorflow as tf
from absl import flags as absl_flags
from tensorboard.plugins.hparams import plugin_data_pb2

import flags  # noqa: F401  (defines main.py's flags)
from flags import tune as tune_flags
from sskd_tf import tuning
from sskd_tf.data import digits
from sskd_tf.distill import METHODS
from sskd_tf.modes import run_config
from sskd_tf.modes.run_config import config_from_flags
from sskd_tf.training.config import RunConfig

from main_cli import REPO, main_errors

TINY = dict(teacher="resnet8", student="resnet8", dataset="digits", image_size=8, batch_size=64,
            take_train=128, take_test=64, epochs=1, verbose=0, method="svd", seed=0,
            deterministic=True, method_options={"gradient": "original", "project_student": False})
SVD_SPACE = ["weight", "clip_scale", "teacher_components", "student_extra_components",
             "rbf_width"]
# The search of the module, through main.py: --seed=0 (which keras-tuner alone would take
# for "no seed") and --deterministic, so that a search killed and resumed must give its
# trials, scores and best trial again.
SEARCH_ARGS = ["--mode=tune", "--method=svd", "--teacher=resnet8", "--student=resnet8",
               "--dataset=digits", "--image_size=8", "--batch_size=64", "--take_train=128",
               "--take_test=64", "--epochs=1", "--svd_gradient=original", "--noproject_student",
               "--tuner=random", "--max_trials=2", "--tune_epochs=1", "--seed=0",
               "--deterministic"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, teacher_run):
    """(train_dir, rows, stdout) of the module's search, run by main.py, with the session's
    teacher as its cached one."""
    train_dir = str(tmp_path_factory.mktemp("search"))
    shutil.copytree(teacher_run, os.path.join(train_dir, "teacher"))
    done = subprocess.run([sys.executable, "main.py", *SEARCH_ARGS, f"--train_dir={train_dir}"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(train_dir, "tune", "trials.csv"), newline="") as handle:
        rows = [{name: _number(value) for name, value in row.items()}
                for row in csv.DictReader(handle)]
    return train_dir, rows, done.stdout


def _number(text):
    try:
        return float(text) if "." in text or "e" in text else int(text)
    except ValueError:
        return text


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


def test_a_random_search_runs_its_trials_and_ranks_them(searched):
    train_dir, rows, stdout = searched
    assert os.path.exists(os.path.join(train_dir, "teacher", "results.json"))
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    scores = [row["val_accuracy"] for row in rows]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    assert all(set(SVD_SPACE) <= set(row) for row in rows)
    assert rows[0]["weight"] != rows[1]["weight"]
    assert (f"Best of 2 completed trials: trial {rows[0]['trial']}, val_accuracy "
            f"{rows[0]['val_accuracy']:.4f}") in stdout


def test_the_table_is_written_as_csv_and_markdown(searched):
    train_dir, rows, _ = searched
    with open(os.path.join(train_dir, "tune", "trials.md")) as handle:
        lines = handle.read().splitlines()
    assert lines[0].startswith("| trial | status | val_accuracy | best_epoch | weight")
    assert len(lines) == 2 + len(rows)
    for line, row in zip(lines[2:], rows):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[:2] == [str(row["trial"]), "COMPLETED"]
        assert float(cells[2]) == pytest.approx(row["val_accuracy"], abs=5e-4)


def test_the_best_trial_is_a_flagfile_that_trains_it_with_every_setting(searched):
    """main.py parses best.flags into the search's run with the best trial's options, in
    train_dir/best: --image_size, the slices, the seed and determinism included."""
    train_dir, rows, _ = searched
    best = rows[0]
    flagfile = os.path.join(train_dir, "tune", "best.flags")
    with open(flagfile) as handle:
        lines = handle.read().splitlines()
    assert "--mode=train" in lines and "--mode=tune" not in lines
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", f"--flagfile={flagfile}"])
    assert flag_values.mode == "train"
    config = config_from_flags(flag_values)
    for name in SVD_SPACE:
        assert config.method_options[name] == pytest.approx(best[name], rel=1e-12)
    assert config.method_options["gradient"] == "original"
    assert config.method_options["project_student"] is False
    expected = dict(teacher="resnet8", student="resnet8", dataset="digits", image_size=8,
                    take_train=128, take_test=64, recipe="kd_methods", epoch_cut="kd_methods",
                    epochs=1, batch_size=64, learning_rate=digits.RUN_DEFAULTS["learning_rate"],
                    seed=0, deterministic=True, method="svd",
                    train_dir=os.path.join(train_dir, "best"),
                    teacher_weights=os.path.join(train_dir, "teacher", "student.keras"))
    assert {name: getattr(config, name) for name in expected} == expected
    assert os.path.exists(config.teacher_weights)


def test_the_flags_of_a_config_give_it_back(tmp_path):
    """`flag_lines` is the inverse of `config_from_flags`, on a config that sets every field."""
    config = RunConfig(
        teacher="resnet14", student="resnet8", teacher_taps=("a", "b"), student_taps=("c", "d"),
        method="fsp", method_options={"weight": 0.25, "normalisation": "eccv2018",
                                      "init_epochs": 3},
        dataset="digits", data_dir=str(tmp_path), image_size=16, validation_split=0.1, download=False,
        recipe="eccv2018", epoch_cut="pass", epochs=7, batch_size=48, learning_rate=0.03,
        lr_decay_points=(0.25, 0.5), lr_decay_rate=0.2, weight_decay=1e-4,
        optimizer="keras_sgd", keras_batch_norm=True, train_dir="somewhere",
        teacher_weights="t.keras", seed=9, strategy="mirrored", jit=True,
        mixed_precision="mixed_bfloat16", deterministic=True, max_consecutive_skips=4,
        take_train=100, take_test=50, verbose=1)
    assert run_config.check_fields_are_flags() == []
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", *run_config.flag_lines(config)])
    assert config_from_flags(flag_values, verbose=1) == config


def test_the_hparams_logs_hold_the_experiment_and_every_trial(searched):
    train_dir, rows, _ = searched
    hparams_dir = os.path.join(train_dir, "tune", "hparams")
    experiment = _hparams_events(hparams_dir)["_hparams_/experiment"][-1].experiment
    assert [info.name for info in experiment.hparam_infos] == SVD_SPACE
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert ("validation", "epoch_accuracy") in metrics
    for row in rows:
        run_dir = os.path.join(hparams_dir, str(row["trial"]), "execution0")
        starts = _hparams_events(run_dir)["_hparams_/session_start_info"]
        assert len(starts) == 1
        assert starts[0].session_start_info.hparams["weight"].number_value == pytest.approx(
            row["weight"])
        assert glob.glob(os.path.join(run_dir, "validation", "events.out.tfevents.*"))


def test_a_rerun_resumes_and_more_trials_continue_the_search(searched, tmp_path):
    train_dir = str(tmp_path / "copy")
    shutil.copytree(searched[0], train_dir)
    before = _trial_files(train_dir)
    config = RunConfig(train_dir=train_dir, **TINY)
    rows = tuning.search(config, tuner="random", max_trials=2, epochs=1).rows
    assert _trial_files(train_dir) == before
    assert [(int(r["trial"]), r["weight"]) for r in rows] == [
        (r["trial"], pytest.approx(r["weight"])) for r in searched[1]]
    rows = tuning.search(config, tuner="random", max_trials=3, epochs=1).rows
    assert _trial_ids(train_dir) == ["trial_0", "trial_1", "trial_2"]
    assert {path: _trial_files(train_dir)[path] for path in before} == before
    assert len(rows) == 3 and all(row["status"] == "COMPLETED" for row in rows)


def test_a_search_with_other_settings_needs_overwrite(searched):
    config = RunConfig(train_dir=searched[0], **TINY)
    with pytest.raises(ValueError, match="holds a search of other settings: tune_epochs 1 "
                                         "\\(asked: 3\\).*--overwrite"):
        tuning.search(config, tuner="random", max_trials=2, epochs=3)


def test_the_bayesian_and_hyperband_tuners_search(searched, tmp_path):
    """Two trials of each, with soft logits (the cheapest step to trace), from the module's
    teacher: every trial completes within its method's space; Hyperband's brackets train
    up to --tune_epochs epochs."""
    options = dict(TINY, method="soft_logits", method_options={})
    for tuner, epochs in (("bayesian", 1), ("hyperband", 2)):
        train_dir = str(tmp_path / tuner)
        shutil.copytree(os.path.join(searched[0], "teacher"), os.path.join(train_dir, "teacher"))
        result = tuning.search(RunConfig(train_dir=train_dir, **options), tuner=tuner,
                               max_trials=2, epochs=epochs)
        assert [row["status"] for row in result.rows] == ["COMPLETED", "COMPLETED"], tuner
        for row in result.rows:
            assert 1.0 <= row["temperature"] <= 8.0 and 0.1 <= row["kd_weight"] <= 0.9
        if tuner == "hyperband":
            assert {row["tuner/epochs"] for row in result.rows} <= {1, 2}


def test_the_bayesian_oracle_proposes_after_a_resume_what_it_would_have_proposed(tmp_path):
    """Past its random initial points the Bayesian oracle optimises from starting points
    keyed by (seed, trial number): an oracle reloaded from its project directory proposes
    the trial the oracle that kept running proposes."""
    hp = kt.HyperParameters()
    hp.Float("x", 0.0, 1.0)
    hp.Float("y", -1.0, 1.0)

    def oracle():
        made = tuning.ReplayingBayesianOracle(objective=kt.Objective("score", "max"),
                                              hyperparameters=hp, max_trials=20,
                                              num_initial_points=2, seed=3)
        made._set_project_dir(str(tmp_path), "project")
        return made

    running = oracle()
    for _ in range(4):
        trial = running.create_trial("tuner0")
        values = trial.hyperparameters.values
        running.update_trial(trial.trial_id, {"score": -(values["x"] - 0.3) ** 2 - values["y"] ** 2})
        trial.status = "COMPLETED"
        running.end_trial(trial)
    running.save()  # end_trial saves before it drops the trial from the ongoing ones
    resumed = oracle()
    resumed.reload()
    assert (resumed.create_trial("tuner0").hyperparameters.values
            == running.create_trial("tuner0").hyperparameters.values)


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


def test_bad_tune_flags_fail_at_parsing_with_one_line():
    cases = [("--tuner=bogus", "value should be one of <random|bayesian|hyperband>"),
             ("--max_trials=0", "--max_trials"), ("--tune_epochs=0", "--tune_epochs")]
    for (flag, message), (error, _) in zip(cases, main_errors(*[["--mode=tune", flag]
                                                                for flag, _ in cases])):
        assert message in error, flag


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
    train_dir, rows, _ = searched
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
    """The module's command again, from scratch with its teacher: SIGKILL once the second
    trial trains; the same command again retries that trial with its hyperparameters and
    ends as the uninterrupted search did: same trials, values, losses and best trial. From
    scratch, --seed=0 proposes the trials the module's search proposed."""
    train_dir = str(tmp_path / "killed")
    shutil.copytree(os.path.join(searched[0], "teacher"), os.path.join(train_dir, "teacher"))
    command = [sys.executable, "main.py", *SEARCH_ARGS, f"--train_dir={train_dir}"]
    with open(tmp_path / "killed.err", "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    try:
        training = os.path.join(train_dir, "tune", "hparams", "1", "execution0", "train")
        deadline = time.time() + 900
        while not glob.glob(os.path.join(training, "events.out.tfevents.*")):
            assert process.poll() is None, _tail(tmp_path / "killed.err")
            assert time.time() < deadline, "the second trial did not start training"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _trials_json(train_dir)["1"][0] == "RUNNING"
    assert not os.path.exists(os.path.join(train_dir, "tune", "best.flags"))
    resumed = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = _trials_json(searched[0])
    assert sorted(expected) == ["0", "1"]
    assert _trials_json(train_dir) == expected
    assert all(status == "COMPLETED" for status, *_ in expected.values())
    tables = []
    for directory in (searched[0], train_dir):
        with open(os.path.join(directory, "tune", "trials.csv")) as handle:
            tables.append(handle.read())
    assert tables[0] == tables[1]
    assert searched[2].splitlines()[-5:] == [
        line.replace(train_dir, searched[0]) for line in resumed.stdout.splitlines()[-5:]]


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
                         epochs=1).rows
    rerun = {row["trial"]: row for row in rows}["1"]
    assert rerun["status"] == "COMPLETED" and 0.0 <= rerun["val_accuracy"] <= 1.0
    with open(trial_path) as handle:
        metrics = json.load(handle)["metrics"]["metrics"]
    assert [obs["value"] for obs in metrics["val_accuracy"]["observations"]] == [
        [rerun["val_accuracy"]]]
    assert all(len(obs["value"]) == 1 for metric in metrics.values()
               for obs in metric["observations"])
