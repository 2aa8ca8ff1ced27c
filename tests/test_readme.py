"""The README's "Distil your own model" runs as written."""
import os
import pathlib
import re

import keras

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
