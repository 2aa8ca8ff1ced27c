"""The typed options of a distillation method, declared without TensorFlow.

A method module declares its options as a frozen dataclass deriving from `MethodOptions`,
one `option(...)` per field:

    @dataclasses.dataclass(frozen=True)
    class AttentionOptions(MethodOptions):
        beta: float = option(1e3, "weight of the attention term", at_least=0)

and names it in its method class (`Options = AttentionOptions`). The command line reads
these declarations from the module's source (distill/catalog.py) so that `--help` and the
validation of `--method_options` need no TensorFlow; the method builds the dataclass
itself, so both see one declaration. An option with `flag=` also gets a main.py flag of
that name (the flag applies to every method with that option).
"""
import dataclasses
import types
import typing

from sskd_tf.errors import UserError

GRADIENT_RULES = ("sum", "clip")


def option(default, help, *, flag=None, choices=None, at_least=None):
    """A dataclass field for one method option: `default`, a one-line `help`, optionally
    the main.py `flag` that sets it, the closed set of `choices`, or the smallest value
    allowed (`at_least`)."""
    metadata = {"help": help, "flag": flag,
                "choices": None if choices is None else tuple(choices), "at_least": at_least}
    return dataclasses.field(default=default, metadata=metadata)


def _coerced(name, value, kind):
    """`value` as the declared `kind` (bool, int, float or str; None stays None), or a
    UserError."""
    if value is None:
        return None
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind in (bool, str) and isinstance(value, kind):
        return value
    raise UserError(f"{name}={value!r} is not a {kind.__name__}")


def _declared_kind(field):
    """The scalar type of a field annotated `float`, `int`, `bool`, `str` or `X | None`."""
    kind = field.type
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Options every method takes; a method's own dataclass adds its fields after these.

    Values are checked and converted when the dataclass is made: each to its declared
    type (an int where a float is declared), within its `choices` or above its
    `at_least`."""

    clip_scale: float = option(
        1.0, "scale of the clip rule's bound on the distillation gradient (docs/method.md "
        "section 5): clip_scale * ||g_ce|| * sigmoid(epoch)", at_least=0)
    gradient_rule: typing.Optional[str] = option(
        None, "how the distillation gradient joins the task gradient: sum, or clip (the "
        "authors' clipped multi-task update); None: the method's own", choices=GRADIENT_RULES)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = _coerced(field.name, getattr(self, field.name), _declared_kind(field))
            choices, at_least = field.metadata.get("choices"), field.metadata.get("at_least")
            if value is not None and choices is not None and value not in choices:
                raise UserError(f"{field.name}={value!r}; choose one of: "
                                f"{', '.join(map(str, choices))}")
            if value is not None and at_least is not None and value < at_least:
                raise UserError(f"{field.name}={value} is out of range "
                                f"(at least {at_least})")
            object.__setattr__(self, field.name, value)

    @classmethod
    def of(cls, method, **options):
        """The options of `method` (a name, for messages) from keyword values; an option it
        does not take is a UserError naming those it does."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UserError(f"--method_options: {method} takes no {', '.join(unknown)}; its "
                            f"options: {', '.join(sorted(known))}")
        try:
            return cls(**options)
        except UserError as error:
            raise UserError(f"{method}: {error}") from None

    def as_dict(self):
        """{option: value}, every option."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
