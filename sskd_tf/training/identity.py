"""What identifies a run: the settings that determine its numbers, their fingerprint, and
the run directory's record of them, `train_dir/run.json`.

A run directory belongs to one run. Its `run.json`, written before any work, holds the
run's identity (every setting its numbers depend on, the identity of its teacher and of its
data) and a fingerprint of it. A command whose identity differs is refused before it does
anything, naming the first differing settings; `--overwrite` starts over. The settings of
`RESUMABLE_FIELDS` are how or where a run works, not what it computes: they may change
between a run and its resumption. Every field of `RunConfig` is one or the other
(tests/test_run_contract.py checks).
"""
import dataclasses
import hashlib
import json
import os
import re

from sskd_tf.errors import UserError
from sskd_tf.training import files

RUN_FILE = "run.json"
RUNS_ROOT = "runs"
# Where and how a run works; a resumed run may change them. data_dir: the data are
# identified by their digest (`data_digest`), wherever they are read from.
RESUMABLE_FIELDS = ("train_dir", "data_dir", "download", "teacher_weights", "jit",
                    "deterministic", "max_consecutive_skips", "overwrite", "verbose")
SHOWN_DIFFERENCES = 3


def _json_value(value):
    """`value` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def file_digest(path, what="a file", chunk=1 << 20):
    """sha256 of a file's bytes; a UserError naming `what` the file is (e.g. a flag) when
    it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
    except FileNotFoundError:
        raise UserError(f"{what}: no such file {path!r}") from None
    except OSError as error:
        raise UserError(f"{what}: cannot read {path!r} ({error.strerror})") from None
    return digest.hexdigest()


def fingerprint(identity):
    """sha256 of the identity's canonical JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def model_identity(name, flag):
    """A network's identity: its name, or for a `.keras` file the digest of its bytes
    (where the file lies does not matter); `flag` names where it was given."""
    return f"sha256:{file_digest(name, flag)}" if name.endswith(".keras") else name


def resolved_method_options(method_class, options):
    """Every option a method is built with: its declared defaults (`Options`)
    overridden by `options`."""
    return method_class.Options.of(method_class.__name__, **options).as_dict()


def run_identity(config, teacher=None):
    """The identity of the resolved RunConfig `config`: every field but the resumable
    ones, the method's options with their defaults, `.keras` networks by digest, and
    `teacher`: the identity of the teacher the run distils from (None without one)."""
    from sskd_tf.distill import METHODS

    identity = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
                if field.name not in RESUMABLE_FIELDS}
    identity["method_options"] = resolved_method_options(METHODS.get(config.method),
                                                         config.method_options)
    identity["teacher"] = model_identity(config.teacher, "--teacher")
    identity["student"] = model_identity(config.student, "--student")
    identity["teacher_identity"] = teacher
    return _json_value(identity)


def differences(recorded, wanted, limit=SHOWN_DIFFERENCES):
    """'name recorded (asked: wanted)' for the first settings that differ, in a stable order."""
    names = sorted(set(recorded) | set(wanted))
    changed = [name for name in names if recorded.get(name) != wanted.get(name)]
    shown = [f"{name} {_short(recorded.get(name))} (asked: {_short(wanted.get(name))})"
             for name in changed[:limit]]
    if len(changed) > limit:
        shown.append(f"and {len(changed) - limit} more")
    return shown


def _short(value, limit=80):
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_record(train_dir):
    """The run.json of train_dir, or None when there is none."""
    path = os.path.join(train_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    record = files.read_json(path, "the run's settings")
    if not isinstance(record, dict) or "identity" not in record or "fingerprint" not in record:
        raise UserError(f"{path} is not a run record (no identity or fingerprint); pass "
                        "--overwrite to start over or choose another --train_dir")
    return record


def check_identity(train_dir, identity, what="run"):
    """Refuse (UserError) when train_dir records a run of another identity; None when
    it records none, else the record."""
    record = read_record(train_dir)
    if record is not None and record["identity"] != identity:
        raise UserError(
            f"{train_dir} holds a {what} of other settings: "
            f"{'; '.join(differences(record['identity'], identity))}; choose another "
            "--train_dir, or pass --overwrite to start over there")
    return record


def record_identity(train_dir, identity, resumable=None, data=None):
    """Write train_dir/run.json (atomically): the identity, its fingerprint, the current
    resumable settings (for information) and the digest of the data, when known."""
    record = {"fingerprint": fingerprint(identity), "identity": identity,
              "resumable": _json_value(resumable or {}), "data_digest": data}
    files.write_json(os.path.join(train_dir, RUN_FILE), record)
    return record


def check_data(train_dir, record, digest):
    """Record the data's digest on a run's first start; refuse a resumed run whose data
    differ from those it started on (another --data_dir holding other data)."""
    recorded = record.get("data_digest")
    if recorded is None:
        record_identity(train_dir, record["identity"], record.get("resumable"), digest)
    elif recorded != digest:
        raise UserError(
            f"{train_dir} holds a run trained on other data (digest {recorded[:12]}, these "
            f"data: {digest[:12]}); point --data_dir at the data it started on, choose another "
            "--train_dir, or pass --overwrite")


def _slug(text, limit=32):
    tail = re.split(r"[:/\\]", text.rstrip("/\\"))[-1] or text
    tail = tail[:-len(".keras")] if tail.endswith(".keras") else tail
    return re.sub(r"[^A-Za-z0-9_.]+", "_", tail)[:limit].strip("_") or "run"


def default_train_dir(kind, names, identity):
    """runs/<kind>-<names...>-<8 hex digits of the identity's fingerprint>: the same
    command always gets the same directory (and resumes there), another command another."""
    parts = [kind] + [_slug(str(name)) for name in names if name] + [fingerprint(identity)[:8]]
    return os.path.join(RUNS_ROOT, "-".join(parts))
