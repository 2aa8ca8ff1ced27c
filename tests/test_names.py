"""The TensorFlow-free name lists agree with the registries they stand for, and the
library's layering holds (library modules never import the CLI package flags/; nothing
about a particular method outside its module)."""
import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

from sskd_tf.data import names as data_names
from sskd_tf.distill import METHODS
from sskd_tf.distill import names as distill_names
from sskd_tf.models import names as model_names

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_method_names_are_the_registry():
    assert sorted(distill_names.METHOD_NAMES) == METHODS.names()


def test_svd_gradients_are_the_ones_the_loss_accepts():
    import tensorflow as tf

    from sskd_tf.distill.kd_svd import GRADIENTS, svd_kd_loss
    student = [tf.random.stateless_normal([2, 4, 4, 3], [0, tap]) for tap in range(2)]
    teacher = [tf.random.stateless_normal([2, 4, 4, 3], [1, tap]) for tap in range(2)]
    # The gradient is the backward pass only: every one gives the same, positive loss.
    losses = [float(svd_kd_loss(student, teacher, gradient=gradient)) for gradient in GRADIENTS]
    assert losses[0] > 1e-3 and losses == pytest.approx([losses[0]] * len(GRADIENTS), rel=1e-6)
    try:
        svd_kd_loss(student, teacher, gradient="other")
    except ValueError as error:
        assert all(name in str(error) for name in GRADIENTS)
    else:
        raise AssertionError("an unknown gradient was accepted")


def test_svd_names_one_meaning_each():
    """"svd" names the method only: the loss's variants, the decomposition backends and
    the method modules each use a name of their own."""
    from sskd_tf import linalg
    from sskd_tf.distill import kd_svd

    assert "svd" in METHODS.names()
    assert "svd" not in kd_svd.VARIANTS and "svd" not in kd_svd.BACKENDS
    assert "svd" not in linalg.BACKENDS
    assert not (REPO / "sskd_tf" / "distill" / "svd.py").exists()
    assert {METHODS.get(name).variant for name in ("svd", "eid", "svd_eccv")} == set(kd_svd.VARIANTS)


def test_every_model_family_builds_from_its_module():
    examples = {"resnet{6n+2}": "resnet8", "wrn{6n+4}_{k}": "wrn10_1"}
    for pattern in model_names.MODELS.names():
        family = model_names.MODELS.get(pattern)
        name = examples.get(pattern, pattern)
        module, arguments = model_names.parse_model_name(name)
        assert module == family.module
        build = importlib.import_module(f"sskd_tf.models.{module}").build
        model = build(name=name, num_classes=3, input_shape=(32, 32, 3), weight_decay=0.0,
                      **arguments)
        assert set(model.output) == {"logits", "features"}


def test_dataset_and_recipe_names_are_the_registries():
    from sskd_tf import data
    from sskd_tf.data.recipes import AUGMENTATIONS
    from sskd_tf.training.recipes import RECIPES
    assert data.DATASETS.names() == sorted(data_names.DATASET_NAMES)
    assert data.DATASET_KINDS.names() == sorted(data_names.DATASET_KINDS)
    assert AUGMENTATIONS.names() == sorted(data_names.RECIPES) == RECIPES.names()


def _imported_modules(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_library_modules_never_import_the_cli_flags():
    offenders = []
    for path in sorted((REPO / "sskd_tf").rglob("*.py")):
        if any(module.split(".")[0] == "flags" for module in _imported_modules(path)):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


# Where the core lives: no method may be named there (its behaviour comes from its module).
CORE = ("sskd_tf/training", "sskd_tf/modes", "sskd_tf/tuning.py", "benchmarks")
# String literals there that equal a method's name but mean something else.
OTHER_MEANINGS = {("sskd_tf/training/precision.py", "none"): "the --mixed_precision value"}


def _literals(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_method_is_named_outside_its_module():
    """The run, the modes, the tuner and the benchmarks ask a method what it is (its
    declaration, its stages) rather than test its name: no string literal there is the
    name of a method (docstrings and comments aside)."""
    names = set(METHODS.names())
    found = []
    for entry in CORE:
        paths = [REPO / entry] if entry.endswith(".py") else sorted((REPO / entry).rglob("*.py"))
        for path in paths:
            relative = path.relative_to(REPO).as_posix()
            docstrings = {node.body[0].value.lineno for node in ast.walk(ast.parse(
                path.read_text())) if isinstance(node, (ast.Module, ast.ClassDef,
                                                        ast.FunctionDef)) and node.body
                          and isinstance(node.body[0], ast.Expr)}
            found += [f"{relative}:{line} {value!r}" for line, value in _literals(path)
                      if value in names and line not in docstrings
                      and (relative, value) not in OTHER_MEANINGS]
    assert found == []


def test_importing_the_package_and_the_name_lists_does_not_load_tensorflow():
    code = ("import sys, sskd_tf, sskd_tf.distill.names, sskd_tf.models, sskd_tf.data, "
            "sskd_tf.linalg, sskd_tf.training.config; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                               text=True, timeout=120, check=True)
    assert completed.stdout.split() == ["False", "False"]
