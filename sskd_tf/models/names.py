"""Model names, parsed without importing TensorFlow so that flags can validate them.

A name is either fixed (`vgg_teacher`, `crd:resnet8x4`) or a member of a parametric family
(`resnet{6n+2}`, `wrn{6n+4}_{k}`). The registry maps the pattern shown to users
to a `Family`, which recognises its members and names the module that builds them.
"""
import dataclasses
import re
from typing import Callable, Optional

from sskd_tf.errors import UserError
from sskd_tf.models import crd
from sskd_tf.registry import Registry


@dataclasses.dataclass(frozen=True)
class Family:
    """One entry of the model registry.

    module: the module of `sskd_tf.models` whose `build` makes the network.
    regex: matched against the whole name.
    arguments: turns the match into the keyword arguments of `build`, or None when
        the name matches the regex but is not a valid member (e.g. `resnet9`).
    """

    module: str
    regex: str
    arguments: Callable[[re.Match], Optional[dict]]

    def parse(self, name):
        match = re.fullmatch(self.regex, name)
        return None if match is None else self.arguments(match)


def _resnet_arguments(match):
    depth = int(match["depth"])
    if depth < 8 or (depth - 2) % 6:
        return None
    return {"blocks_per_stage": (depth - 2) // 6}


def _wrn_arguments(match):
    depth, widen_factor = int(match["depth"]), int(match["widen_factor"])
    if depth < 10 or (depth - 4) % 6:
        return None
    return {"blocks_per_stage": (depth - 4) // 6, "widen_factor": widen_factor}


def _role_arguments(role):
    return lambda match: {"role": role}


def _fixed_arguments(arguments):
    return lambda match: dict(arguments)


MODELS = Registry("model")
MODELS.register("resnet{6n+2}",
                Family("resnet", r"resnet(?P<depth>[1-9][0-9]*)", _resnet_arguments))
MODELS.register("wrn{6n+4}_{k}",
                Family("wrn", r"wrn(?P<depth>[1-9][0-9]*)_(?P<widen_factor>[1-9][0-9]*)",
                       _wrn_arguments))
for _family in ("vgg", "mobilenet", "resnext"):
    for _role in ("teacher", "student"):
        MODELS.register(f"{_family}_{_role}",
                        Family(_family, f"{_family}_{_role}", _role_arguments(_role)))

# RepDistiller's networks (models/crd/), one fixed name each.
for _network, (_module, _arguments) in crd.NETWORKS.items():
    MODELS.register(crd.PREFIX + _network,
                    Family(f"crd.{_module}", re.escape(crd.PREFIX + _network),
                           _fixed_arguments(_arguments)))

# The usual student of each family's teacher (the pairs of the paper and of the authors' code).
_STUDENT_OF_FAMILY = {"resnet": "resnet8", "wrn": "wrn16_4"}
# The usual student of single teachers (RepDistiller's benchmark pairs).
_STUDENT_OF_TEACHER = {crd.PREFIX + teacher: crd.PREFIX + student
                       for teacher, student in crd.USUAL_STUDENTS.items()}


KERAS_PREFIX = "keras:"


def is_external(name):
    """A network from outside the port (`models.external`): a `.keras` file or
    `keras:<ApplicationName>[:imagenet]`."""
    return name.endswith(".keras") or re.fullmatch(
        re.escape(KERAS_PREFIX) + r"[A-Za-z][A-Za-z0-9_]*(:imagenet)?", name) is not None


def choices():
    """The known names and patterns, as shown in error messages."""
    return ", ".join(MODELS.names() + ["a .keras file", "keras:<ApplicationName>[:imagenet]"])


def parse_model_name(name):
    """Return (module, build keyword arguments) for `name`; UserError if it is unknown."""
    for pattern in MODELS.names():
        family = MODELS.get(pattern)
        arguments = family.parse(name)
        if arguments is not None:
            return family.module, arguments
    raise UserError(f"unknown model {name!r}; choose one of: {choices()}")


def is_model_name(name):
    if is_external(name):
        return True
    try:
        parse_model_name(name)
    except ValueError:
        return False
    return True


def student_for(teacher_name):
    """The student the authors pair with `teacher_name`: resnet* -> resnet8,
    wrn* -> wrn16_4, X_teacher -> X_student (a student name maps to itself), and
    RepDistiller's first pair of each of its teachers (crd:resnet32x4 -> crd:resnet8x4,
    `crd.USUAL_STUDENTS`); UserError for a network without a usual student."""
    no_student = UserError(f"the teacher {teacher_name!r} has no usual student: pass --student")
    if is_external(teacher_name):
        raise no_student
    module, arguments = parse_model_name(teacher_name)
    if teacher_name in _STUDENT_OF_TEACHER:
        return _STUDENT_OF_TEACHER[teacher_name]
    if module in _STUDENT_OF_FAMILY:
        return _STUDENT_OF_FAMILY[module]
    if "role" not in arguments:
        raise no_student
    return f"{module}_student"
