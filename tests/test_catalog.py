"""The method catalog: what the method modules declare, read without importing them,
agrees with the registry, and a new method module reaches --method, its own flags, the
tuner and compare mode without another file changing."""
import inspect
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from sskd_tf.distill import METHODS
from sskd_tf.distill.catalog import catalog, parse_method_options, read_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_catalog_names_every_registered_method():
    assert list(catalog().method_names) == METHODS.names()


def test_each_command_line_option_is_a_constructor_argument_with_the_same_default():
    for option in catalog().options:
        assert option.methods, option.flag
        for method in option.methods:
            parameters = inspect.signature(METHODS.get(method).__init__).parameters
            assert option.option in parameters, (method, option.option)
            assert parameters[option.option].default == option.default, (method, option.flag)


def test_the_kd_svd_flags_belong_to_the_kd_svd_family():
    flags_of = {option.flag: set(option.methods) for option in catalog().options}
    family = {"svd", "eid", "svd_eccv"}
    assert flags_of == {"svd_gradient": family, "svd_backend": family,
                        "decomposition_device": family, "project_student": family}


def test_a_module_is_read_without_running_it(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text(textwrap.dedent('''
        raise SystemExit("this module must not run")
        COMMAND_LINE_OPTIONS = {"probe_level": {"option": "level", "default": 2, "help": "h"}}

        @METHODS.register("probe")
        class Probe:
            pass
    '''))
    names, options = read_module(str(module))
    assert names == ["probe"]
    assert options == {"probe_level": {"option": "level", "default": 2, "help": "h"}}


def test_method_options_parse_literals_and_strings():
    assert parse_method_options(["weight=2", "projection=pca", "scale=0.5"]) == {
        "weight": 2, "projection": "pca", "scale": 0.5}
    with pytest.raises(ValueError, match="'weight' is not name=value"):
        parse_method_options(["weight"])


DUMMY_METHOD = '''
"""A method added by the test: a weighted squared difference of the logits."""
import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod

COMMAND_LINE_OPTIONS = {
    "dummy_norm": {"option": "norm", "default": "l2", "choices": ("l1", "l2"),
                   "help": "Norm of the dummy."},
}


@METHODS.register("dummy")
class Dummy(DistillationMethod):
    def __init__(self, strength=0.5, norm="l2", **kwargs):
        super().__init__(**kwargs)
        self.strength = float(strength)
        self.norm = norm

    def call(self, student_out, teacher_out, labels, training=False):
        gap = student_out["logits"] - tf.stop_gradient(teacher_out["logits"])
        size = tf.abs(gap) if self.norm == "l1" else tf.square(gap)
        return {self.name: self.strength * tf.reduce_mean(size)}

    @classmethod
    def search_space(cls, hp):
        return {"strength": hp.Float("strength", 0.1, 1.0, sampling="log", default=0.5)}
'''

PROBE = '''
import copy, json, sys
from absl import flags as absl_flags
import flags
from sskd_tf import tuning
from sskd_tf.modes.run_config import config_from_flags

values = copy.deepcopy(absl_flags.FLAGS)
values(["main.py", "--method=dummy", "--dummy_norm=l1", "--dataset=digits"])
config = config_from_flags(values)
print(json.dumps({"options": config.method_options,
                  "tuned": tuning.tuned_names(tuning.search_space(config))}))
'''


@pytest.fixture(scope="module")
def repo_with_a_new_method(tmp_path_factory):
    """A copy of the project whose only change is one new module in sskd_tf/distill/."""
    root = tmp_path_factory.mktemp("repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for entry in ("sskd_tf", "flags"):
        shutil.copytree(os.path.join(REPO, entry), root / entry, ignore=ignore)
    shutil.copy(os.path.join(REPO, "main.py"), root / "main.py")
    (root / "sskd_tf" / "distill" / "dummy.py").write_text(DUMMY_METHOD)
    return root


def _run(root, *argv, timeout=600):
    return subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True,
                          timeout=timeout)


def test_a_new_method_module_brings_its_name_and_flags_to_help(repo_with_a_new_method):
    completed = _run(repo_with_a_new_method, "main.py", "--help")
    assert completed.returncode == 0, completed.stderr[-2000:]
    method_help = completed.stdout[completed.stdout.index("--method:"):]
    assert "dummy" in method_help.split("\n\n")[0]
    assert "--dummy_norm: <l1|l2>: Norm of the dummy. (methods: dummy)" in completed.stdout


def test_a_new_method_module_reaches_the_run_options_and_the_tuner(repo_with_a_new_method):
    completed = _run(repo_with_a_new_method, "-c", PROBE)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == (
        '{"options": {"norm": "l1"}, "tuned": ["strength"]}')


def test_a_new_method_module_runs_in_compare_mode(repo_with_a_new_method):
    train_dir = repo_with_a_new_method / "runs"
    completed = _run(repo_with_a_new_method, "main.py", "--mode=compare", "--methods=dummy",
                     "--seeds=1", "--teacher=resnet8", "--dataset=digits", "--image_size=8", "--take_train=64",
                     "--take_test=32", "--epochs=1", "--batch_size=32",
                     f"--train_dir={train_dir}")
    assert completed.returncode == 0, completed.stderr[-2000:]
    with open(train_dir / "compare" / "results.csv") as handle:
        rows = handle.read().splitlines()
    assert rows[1].startswith("dummy,1,")
