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
    """The whole first run (about 3 minutes on 2 idle cores): its teacher line and every
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


def _benchmark_commands():
    """(literature row, argv) of each row of the README's "Today's benchmark" table."""
    section = readme_section("Today's benchmark (the CRD suite)")
    header = re.search(r"\| Flags after `python main.py ([^`]*)` \|", section).group(1)
    commands = []
    for row in re.findall(r"^\| (.+?) \| [^|]+ \| [^|]+ \| `([^`]*)` \|$", section, flags=re.M):
        commands.append((row[0], ["main.py", *header.split(), *row[1].split()]))
    return commands


def test_todays_benchmark_commands_are_runs_of_the_suites_pair_and_recipe():
    """Each command of the "Today's benchmark" table parses into a run of the CRD recipe on
    crd:resnet32x4 -> crd:resnet8x4, with options its method accepts, for every method the
    literature column names."""
    import copy

    from absl import flags as absl_flags

    import flags  # noqa: F401  (defines main.py's flags)
    from sskd_tf.distill import METHODS
    from sskd_tf.modes.run_config import config_from_flags

    commands = _benchmark_commands()
    methods = set()
    for label, argv in commands:
        flag_values = copy.deepcopy(absl_flags.FLAGS)
        flag_values(argv)
        config = config_from_flags(flag_values)
        assert (config.recipe, config.teacher, config.student, config.dataset) == (
            "crd2020", "crd:resnet32x4", "crd:resnet8x4", "cifar100"), label
        options = METHODS.get(config.method).Options.of(config.method, **config.method_options)
        methods.add(config.method)
        if "logit standardization" in label:
            assert options.logit_standardization and options.temperature == 2
    assert methods == {"soft_logits", "crd", "dkd", "svd"}
