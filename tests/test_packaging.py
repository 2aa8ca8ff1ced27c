"""`pip install .` builds the library with every module and its bundled data, and
declares requirements.txt (the runtime needs, without the tests') as its dependencies."""
import email
import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def _requirements(path):
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


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
    normalise = lambda name: name.replace("_", "-").lower()
    assert [normalise(d) for d in runtime] == [normalise(r) for r in _requirements(REPO / "requirements.txt")]
    assert not any(r.startswith("pytest") for r in _requirements(REPO / "requirements.txt"))
