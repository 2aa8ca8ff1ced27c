"""The README's "Distil your own model" runs as written."""
import os
import pathlib
import re

import keras
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def readme_section(title):
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def python_blocks(section):
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_distil_your_own_model_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    library_example, keras_example = python_blocks(readme_section("Distil your own model"))
    namespace = {}
    exec(compile(library_example, "README.md", "exec"), namespace)
    saved = keras.saving.load_model(os.path.join(tmp_path, "student.keras"))
    assert saved.output_shape == (None, 10)
    assert "svd_loss" in namespace["distiller"].history.history
    exec(compile(keras_example, "README.md", "exec"), namespace)
    history = namespace["keras_distiller"].history.history
    assert history["distillation_loss"][0] > 0  # Keras' own distiller ran the AT loss


def test_the_first_run_is_the_flagfile_of_a_comparison_it_describes(monkeypatch):
    """The README's first command reads examples/first_run.flags, which main.py parses
    into a comparison of the student alone and KD-SVD over 3 seeds on digits."""
    import copy

    from absl import flags as absl_flags

    import flags  # noqa: F401  (defines main.py's flags)
    from sskd_tf.modes import compare as compare_mode

    section = readme_section("First run (offline)")
    assert "    python main.py --flagfile=examples/first_run.flags\n" in section
    calls = []
    monkeypatch.setattr(compare_mode, "compare", lambda *args: calls.append(args))
    monkeypatch.chdir(README.parent)
    flag_values = copy.deepcopy(absl_flags.FLAGS)
    flag_values(["main.py", "--flagfile=examples/first_run.flags"])
    assert flag_values.mode == "compare"
    compare_mode.run(flag_values)
    (base, methods, seeds, _), = calls
    assert (methods, seeds) == (["none", "svd"], 3)
    assert (base.dataset, base.teacher, base.student) == ("digits", "resnet14", "resnet8")
    assert base.deterministic
    for value in (f"{base.image_size}x{base.image_size}", f"{base.epochs} epochs",
                  f"batch {base.batch_size}", f"learning rate {base.learning_rate}"):
        assert value in section, value
    rows = [row for row in first_run_table(section) if row[0] in methods]
    assert [row[:3] for row in rows] == [[method, str(seeds), str(base.epochs)]
                                        for method in methods]


def first_run_table(section):
    """The cells of the README's first-run result table, one list a row (header and rule
    left out)."""
    return _table_rows(re.search(r"```\nTeacher .*?```", section, flags=re.S).group(0))


@pytest.mark.slow
def test_the_first_run_gives_the_readme_table_digit_for_digit(tmp_path):
    """The whole first run (about 9 minutes on 2 cores): its teacher line and every
    accuracy cell of its table equal the README's (the step times are this machine's)."""
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "main.py", "--flagfile=examples/first_run.flags",
         f"--train_dir={tmp_path}"], cwd=README.parent, capture_output=True, text=True,
        timeout=3600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    section = readme_section("First run (offline)")
    teacher_line = re.search(r"Teacher resnet14: validation accuracy [\d.]+%", section).group(0)
    report = (tmp_path / "compare" / "results.md").read_text()
    assert teacher_line in report
    measured = {cells[0]: cells for cells in _table_rows(report)}
    for cells in first_run_table(section):
        assert measured[cells[0]][:-1] == cells[:-1], (cells, measured[cells[0]])


def _table_rows(markdown):
    """The cells of a markdown table's body rows (the first table of `markdown`)."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
