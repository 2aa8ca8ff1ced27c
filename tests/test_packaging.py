"""`pip install .` builds the library with every module and its bundled data, and
declares requirements.txt (the runtime needs, without the tests') as its dependencies;
the installed TensorFlow, Keras and keras-tuner are the minor versions tested."""
import email
import importlib.metadata
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _requirements(path):
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _requirement(text):
    """(normalised name, sorted version clauses) of a requirement line."""
    name, clauses = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", text.strip()).groups()
    return name.replace("_", "-").lower(), sorted(c.strip() for c in clauses.split(",") if c)


def test_pip_install_gives_the_whole_library(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", "runs", "build", "*.egg-info", "__pycache__", "tests", "benchmarks"))
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "sskd_tf").rglob("*.py")}
    installed = {p.relative_to(target).as_posix() for p in (target / "sskd_tf").rglob("*.py")}
    assert modules <= installed
    assert (target / "sskd_tf" / "data" / "digits.npz").stat().st_size > 0
    [metadata] = (target).glob("sskd_tf-*.dist-info/METADATA")
    declared = email.message_from_string(metadata.read_text()).get_all("Requires-Dist")
    runtime = [d for d in declared if "extra ==" not in d]
    assert [_requirement(d) for d in runtime] == [
        _requirement(r) for r in _requirements(REPO / "requirements.txt")]
    assert not any(r.startswith("pytest") for r in _requirements(REPO / "requirements.txt"))


# The packages whose private APIs the code uses (docs/architecture.md, "Private APIs").
PINNED = ("tensorflow", "keras", "keras-tuner")


def _bounds(requirement):
    """(name, lower, upper) of a `name>=x,<y` line."""
    match = re.fullmatch(r"([\w-]+)>=([\d.]+),<([\d.]+)", requirement)
    return match.groups() if match else (None, None, None)


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@pytest.mark.parametrize("package", PINNED)
def test_the_installed_version_is_one_tested(package):
    bounds = {name: (lower, upper) for name, lower, upper in map(
        _bounds, _requirements(REPO / "requirements.txt")) if name}
    assert package in bounds, f"requirements.txt must bound {package} to the tested minor"
    lower, upper = bounds[package]
    installed = importlib.metadata.version(package)
    assert _version(lower) <= _version(installed) < _version(upper), (
        f"{package} {installed} is not a tested version ({lower} <= version < {upper}): "
        "sskd_tf uses private APIs of it (docs/architecture.md, \"Private APIs\"); check "
        "them against this version, run the suite, then move the bounds")
