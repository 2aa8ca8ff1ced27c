"""The method catalog: what the method modules declare, read without importing them,
agrees with the imported classes, and a new method module (here one with an
initialisation stage) reaches --method, its own flags, the tuner and compare mode without
another file changing."""
import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from sskd_tf.distill import METHODS
from sskd_tf.distill.catalog import catalog, parse_method_options, read_package

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_catalog_names_every_registered_method():
    assert list(catalog().method_names) == METHODS.names()


def test_the_catalog_reads_each_method_s_options_as_its_dataclass_declares_them():
    for method in METHODS.names():
        fields = dataclasses.fields(METHODS.get(method).Options)
        declared = [(f.name, f.default, f.metadata["help"], f.metadata["flag"],
                     f.metadata["choices"], f.metadata["at_least"]) for f in fields]
        read = [(o.name, o.default, o.help, o.flag, o.choices, o.at_least)
                for o in catalog().options_of(method)]
        assert read == declared, method


def test_the_roles_name_the_default_and_the_baseline_method():
    assert catalog().with_role("default") == "svd"
    assert catalog().with_role("baseline") == "none"
    assert {name: METHODS.get(name).role for name in ("svd", "none")} == {
        "svd": "default", "none": "baseline"}


def test_the_kd_svd_flags_belong_to_the_kd_svd_family():
    flags_of = {option.flag: set(option.methods) for option in catalog().options}
    family = {"svd", "eid", "svd_eccv"}
    assert flags_of == {"svd_gradient": family, "svd_backend": family,
                        "decomposition_device": family, "project_student": family}


PROBE_MODULE = '''
raise SystemExit("this module must not run")
from sskd_tf.linalg import BACKENDS
LEVELS = (1, 2, 3)


class ProbeOptions(MethodOptions):
    level: int = option(2, "the level", flag="probe_level", choices=LEVELS)
    backend: str = option("gram", "a backend", choices=BACKENDS)


class Base:
    Options = ProbeOptions


@METHODS.register("probe")
class Probe(Base):
    role = "default"


@METHODS.register("plain")
class Plain:
    pass
'''


def test_a_module_is_read_without_running_it(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE_MODULE)
    read = read_package([str(tmp_path)])
    assert read.method_names == ("plain", "probe")
    level, backend = read.options_of("probe")[-2:]
    assert (level.name, level.type, level.default, level.flag, level.choices) == (
        "level", "int", 2, "probe_level", (1, 2, 3))
    assert backend.choices == ("linalg_svd", "gram", "hybrid", "batched")
    assert [o.name for o in read.options_of("plain")] == ["clip_scale", "gradient_rule"]
    assert read.with_role("default") == "probe"
    assert [(o.flag, o.methods) for o in read.options] == [("probe_level", ("probe",))]


def test_a_flag_declared_differently_by_two_methods_is_refused(tmp_path):
    (tmp_path / "twins.py").write_text(textwrap.dedent('''
        class AOptions(MethodOptions):
            level: int = option(2, "the level", flag="level")

        class BOptions(MethodOptions):
            level: int = option(3, "the level", flag="level")

        @METHODS.register("a")
        class A:
            Options = AOptions

        @METHODS.register("b")
        class B:
            Options = BOptions
    '''))
    with pytest.raises(ValueError, match="flag --level is declared differently"):
        read_package([str(tmp_path)]).options


def test_method_options_parse_literals_and_strings():
    assert parse_method_options(["weight=2", "projection=pca", "scale=0.5"]) == {
        "weight": 2, "projection": "pca", "scale": 0.5}
    with pytest.raises(ValueError, match="'weight' is not name=value"):
        parse_method_options(["weight"])


# A whole method in one module: a weighted difference of the logits, first trained alone for
# `init_epochs` epochs (an initialisation stage), then with the task.
DUMMY_METHOD = '''
"""A method added by the test: a weighted difference of the logits, with a warm-up."""
import dataclasses

import tensorflow as tf

from sskd_tf.distill.base import METHODS, DistillationMethod
from sskd_tf.distill.options import MethodOptions, option
from sskd_tf.distill.stages import Stage, Update


@dataclasses.dataclass(frozen=True)
class DummyOptions(MethodOptions):
    strength: float = option(0.5, "weight of the term", at_least=0)
    norm: str = option("l2", "Norm of the dummy.", flag="dummy_norm", choices=("l1", "l2"))
    init_epochs: int = option(1, "epochs on the term alone first", at_least=0)


@METHODS.register("dummy")
class Dummy(DistillationMethod):
    """The logits pulled towards the teacher's."""

    Options = DummyOptions
    library_name = "DummyDistillation"
    reads = "logits"
    min_taps = 0

    def stages(self):
        if not self.options.init_epochs:
            return super().stages()
        return (Stage("warm_up", epochs=self.options.init_epochs,
                      updates=(Update(task=False),)), Stage())

    def call(self, student_out, teacher_out, labels, training=False):
        gap = student_out["logits"] - tf.stop_gradient(teacher_out["logits"])
        size = tf.abs(gap) if self.options.norm == "l1" else tf.square(gap)
        return {self.name: self.options.strength * tf.reduce_mean(size)}

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
from sskd_tf import losses
print(json.dumps({"options": config.method_options,
                  "tuned": tuning.tuned_names(tuning.search_space(config)),
                  "loss": losses.DummyDistillation(init_epochs=0).method.options.init_epochs}))
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
        '{"options": {"norm": "l1"}, "tuned": ["strength"], "loss": 0}')


def test_a_new_method_module_runs_in_compare_mode(repo_with_a_new_method, teacher_run):
    train_dir = repo_with_a_new_method / "runs"
    completed = _run(repo_with_a_new_method, "main.py", "--mode=compare", "--methods=dummy",
                     "--seeds=1", "--teacher=resnet8", "--dataset=digits", "--image_size=8",
                     "--take_train=64", "--take_test=32", "--epochs=1", "--batch_size=32",
                     f"--teacher_weights={os.path.join(teacher_run, 'student.keras')}",
                     f"--train_dir={train_dir}")
    assert completed.returncode == 0, completed.stderr[-2000:]
    with open(train_dir / "compare" / "results.csv") as handle:
        rows = handle.read().splitlines()
    assert rows[1].startswith("dummy,1,")
    with open(train_dir / "compare" / "dummy" / "seed0" / "history.csv") as handle:
        history = handle.read().splitlines()
    assert len(history) == 1 + 2  # the warm-up epoch, then the run's one epoch
