"""The distillation methods as their modules declare them, read from the source
without importing it (so without TensorFlow): the command line builds `--method`
and each method's own flags from this, and `--help` stays fast.

What a method module declares:
- each method, by decorating its class with `@METHODS.register("name")`;
- optionally `COMMAND_LINE_OPTIONS`, a dict literal from a flag name to
  {"option": the constructor argument it sets, "default": ..., "help": ...,
  "choices": (...) for a closed set}; the flags apply to every method the module
  registers, and a method's `--method_options` entry of the same name wins.

Adding a method therefore means adding one module. tests/test_registries.py
checks this reading against the imported registry.
"""
import ast
import dataclasses
import functools
import os
import pkgutil

from sskd_tf.errors import UserError

REGISTER_CALL = "METHODS.register"
OPTIONS_NAME = "COMMAND_LINE_OPTIONS"


@dataclasses.dataclass(frozen=True)
class CommandLineOption:
    """One flag of main.py that sets a constructor argument of some methods."""

    flag: str
    option: str
    default: object
    help: str
    methods: tuple
    choices: tuple = None


@dataclasses.dataclass(frozen=True)
class Catalog:
    method_names: tuple
    options: tuple

    def options_of(self, method):
        """The command-line options that apply to `method`."""
        return tuple(option for option in self.options if method in option.methods)


def _registered_names(class_node):
    names = []
    for decorator in class_node.decorator_list:
        if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == REGISTER_CALL:
            names.append(ast.literal_eval(decorator.args[0]))
    return names


def read_module(path):
    """(method names, {flag: declaration}) declared by the module at `path`."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    names, options = [], {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names += _registered_names(node)
        elif isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == OPTIONS_NAME for target in node.targets):
            options = ast.literal_eval(node.value)
    return names, options


def read_package(directories):
    """The Catalog of the method modules found in `directories` (a package's __path__)."""
    names, options = [], []
    for module in sorted(pkgutil.iter_modules(directories), key=lambda found: found.name):
        path = os.path.join(module.module_finder.path, f"{module.name}.py")
        if module.ispkg or not os.path.exists(path):
            continue
        module_names, declared = read_module(path)
        names += module_names
        for flag, spec in declared.items():
            choices = spec.get("choices")
            options.append(CommandLineOption(
                flag=flag, option=spec["option"], default=spec["default"], help=spec["help"],
                methods=tuple(module_names), choices=None if choices is None else tuple(choices)))
    return Catalog(method_names=tuple(sorted(names)), options=tuple(options))


@functools.cache
def catalog():
    """The Catalog of this package."""
    from sskd_tf import distill
    return read_package(distill.__path__)


def parse_method_options(items):
    """['weight=2', 'projection=pca'] -> {'weight': 2, 'projection': 'pca'}: values are
    Python literals where they parse as one, else strings."""
    options = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name.strip():
            raise UserError(f"--method_options: {item!r} is not name=value")
        try:
            options[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[name.strip()] = value.strip()
    return options


def flag_of_option(method):
    """{constructor option: flag name} of the command-line options of `method`."""
    return {option.option: option.flag for option in catalog().options_of(method)}
