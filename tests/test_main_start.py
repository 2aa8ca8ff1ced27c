"""What a new user sees first: `--help`, and a start without TensorFlow's C++ log lines."""
import os
import re
import subprocess
import sys

from absl import flags as absl_flags

import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl's C++ log line: severity letter, MMDD, time (e.g. "I0000 00:00:1795811158.672694 ...").
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def _main(*argv, drop_env=("TF_CPP_MIN_LOG_LEVEL",), status=0):
    env = {name: value for name, value in os.environ.items() if name not in drop_env}
    completed = subprocess.run([sys.executable, "main.py", *argv], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == status, completed.stderr[-3000:]
    return completed


def _listed_flags(help_text):
    """Names of the flags a help text lists, from its `  --name:`, `  --[no]name:` and
    `  -v,--name:` lines."""
    return set(re.findall(r"^\s+(?:-\w,)?--(?:\[no\])?(\w+):", help_text, re.MULTILINE))


def _module_sections(help_text):
    """{module name: flags listed under it} of absl's `module.name:` headed help (a
    heading names a dotted module, so that prose such as "found:" is not one)."""
    sections, current = {}, None
    for line in help_text.splitlines():
        heading = re.match(r"^(\w+(?:\.\w+)+):", line)
        if heading:
            current = sections.setdefault(heading.group(1), set())
        elif current is not None:
            current |= _listed_flags(line)
    return sections


def test_help_lists_the_project_flags_by_concern_and_nothing_of_absl():
    help_text = _main("--help").stdout
    full = _module_sections(_main("--helpfull", status=1).stdout)  # absl's --helpfull exits 1
    absl_names = set().union(*(names for module, names in full.items()
                               if module.startswith("absl.")))
    assert {"logtostderr", "verbosity", "helpfull", "only_check_args"} <= absl_names
    by_module = absl_flags.FLAGS.flags_by_module_dict()
    sections = _module_sections(help_text)
    for module in flags.MODULES:
        project_names = {flag.name for flag in by_module[module.__name__]}
        assert sections[module.__name__] == project_names, module.__name__
        assert project_names <= full[module.__name__]
    assert list(sections) == [module.__name__ for module in flags.MODULES]
    assert not _listed_flags(help_text) & absl_names
    assert "(default: 'cifar100')" in help_text and "(default: 'svd')" in help_text
    assert "Flags every mode shares" in help_text and "--helpfull" in help_text


def test_a_start_prints_no_cpp_log_line_unless_asked():
    summary = ("--mode=summary", "--dataset=digits", "--teacher=resnet8")
    quiet = _main(*summary)
    assert "resnet8" in quiet.stdout and "FLOPs" in quiet.stdout
    assert not [line for line in quiet.stderr.splitlines() if CPP_LOG_LINE.match(line)], \
        quiet.stderr
    assert "absl::InitializeLog" not in quiet.stderr
    for asked in (("-v", "1"), ("--verbosity=0",)):
        loud = _main(*summary, *asked)
        assert [line for line in loud.stderr.splitlines() if CPP_LOG_LINE.match(line)], asked
    chosen = _main(*summary, drop_env=())
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "2"  # tests/conftest.py
    assert "absl::InitializeLog" in chosen.stderr  # the user's setting is left as it is
