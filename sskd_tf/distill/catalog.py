"""The distillation methods as their modules declare them, read from the source
without importing it (so without TensorFlow): the command line builds `--method`,
each method's options and their flags from this, and `--help` stays fast.

What a method module declares (distill/base.py):
- each method, by decorating its class with `@METHODS.register("name")`; a class may
  give itself a `role` (a literal): "default" (main.py's --method) or "baseline" (the
  method that trains a network alone: teachers, compare's student row);
- its options, a dataclass deriving from `MethodOptions` whose fields are `option(...)`
  calls (distill/options.py), named in the class (or a base class in the module) as
  `Options = ...`. The arguments of `option` are literals, or names the module binds to
  literals or imports from a module that does not import TensorFlow (e.g.
  `sskd_tf.linalg.BACKENDS`).

Adding a method therefore means adding one module. tests/test_catalog.py checks this
reading against the imported classes.
"""
import ast
import dataclasses
import functools
import importlib
import os
import pkgutil

from sskd_tf.distill.options import MethodOptions
from sskd_tf.errors import UserError

REGISTER_CALL = "METHODS.register"
BASE_OPTIONS = MethodOptions.__name__


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option of a method: its name, declared type (source text), default, help and,
    where declared, its main.py flag, choices and lower bound."""

    name: str
    type: str
    default: object
    help: str
    flag: str = None
    choices: tuple = None
    at_least: object = None


@dataclasses.dataclass(frozen=True)
class CommandLineOption:
    """One flag of main.py that sets an option of the methods in `methods`."""

    flag: str
    option: str
    default: object
    help: str
    methods: tuple
    choices: tuple = None


def _base_specs():
    specs = []
    for field in dataclasses.fields(MethodOptions):
        kind = getattr(field.type, "__name__", None) or str(field.type)
        specs.append(OptionSpec(field.name, kind, field.default, **field.metadata))
    return tuple(specs)


class _Module:
    """What one method module's source declares."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as handle:
            self.tree = ast.parse(handle.read(), path)
        self.path = path
        self.classes = {node.name: node for node in self.tree.body
                        if isinstance(node, ast.ClassDef)}
        self.literals, self.imported = {}, {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                    node.targets[0], ast.Name):
                try:
                    self.literals[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (node.module, alias.name)

    def value(self, node):
        """The value of an `option(...)` argument: a literal or a bound name."""
        try:
            return ast.literal_eval(node)
        except ValueError:
            pass
        if isinstance(node, ast.Name) and node.id in self.literals:
            return self.literals[node.id]
        if isinstance(node, ast.Name) and node.id in self.imported:
            module, name = self.imported[node.id]
            return getattr(importlib.import_module(module), name)
        raise ValueError(f"{self.path}: option argument {ast.unparse(node)} is neither a "
                         "literal nor a name bound to one")

    def registered(self):
        """(method name, class name) of each registered class."""
        found = []
        for node in self.classes.values():
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == REGISTER_CALL:
                    found.append((ast.literal_eval(decorator.args[0]), node.name))
        return found

    def role(self, class_name):
        """The literal `role = ...` of class `class_name`, or None."""
        for statement in self.classes[class_name].body:
            if isinstance(statement, ast.Assign) and ast.unparse(statement.targets[0]) == "role":
                return ast.literal_eval(statement.value)
        return None

    def options_class(self, class_name):
        """The name of the Options dataclass of method class `class_name`: its own
        `Options = ...`, else its bases' in this module, else MethodOptions."""
        node = self.classes.get(class_name)
        if node is None:
            return BASE_OPTIONS
        for statement in node.body:
            if (isinstance(statement, ast.Assign) and ast.unparse(statement.targets[0]) == "Options"):
                return ast.unparse(statement.value)
        for base in node.bases:
            found = self.options_class(ast.unparse(base))
            if found != BASE_OPTIONS:
                return found
        return BASE_OPTIONS

    def option_specs(self, options_class):
        """The OptionSpecs of the dataclass `options_class`, its bases' first."""
        if options_class == BASE_OPTIONS:
            return _base_specs()
        node = self.classes.get(options_class)
        if node is None:
            raise ValueError(f"{self.path}: Options class {options_class} is not defined here")
        specs = {}
        for base in node.bases:
            for spec in self.option_specs(ast.unparse(base)):
                specs[spec.name] = spec
        for statement in node.body:
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.value, ast.Call)
                    and ast.unparse(statement.value.func) == "option"):
                continue
            call = statement.value
            default, help_text = (self.value(argument) for argument in call.args)
            keywords = {keyword.arg: self.value(keyword.value) for keyword in call.keywords}
            if keywords.get("choices") is not None:
                keywords["choices"] = tuple(keywords["choices"])
            name = statement.target.id
            specs[name] = OptionSpec(name, ast.unparse(statement.annotation), default, help_text,
                                     **keywords)
        return tuple(specs.values())


@dataclasses.dataclass(frozen=True)
class Catalog:
    method_names: tuple
    method_options: dict
    roles: dict

    def with_role(self, role):
        """The one method that declares `role`."""
        found = [method for method, declared in self.roles.items() if declared == role]
        if len(found) != 1:
            raise ValueError(f"{len(found)} methods declare the role {role!r}: {found}")
        return found[0]

    def options_of(self, method):
        """The OptionSpecs of `method` (every option it takes)."""
        return self.method_options[method]

    def flags_of(self, method):
        """The command-line options (flags) that apply to `method`."""
        return tuple(option for option in self.options if method in option.methods)

    @property
    def options(self):
        """Every CommandLineOption: one per flag, with the methods it applies to."""
        flags = {}
        for method in self.method_names:
            for spec in self.method_options[method]:
                if spec.flag is None:
                    continue
                declared = flags.get(spec.flag)
                option = CommandLineOption(spec.flag, spec.name, spec.default, spec.help,
                                           (method,), spec.choices)
                if declared is not None:
                    if dataclasses.replace(declared, methods=()) != dataclasses.replace(
                            option, methods=()):
                        raise ValueError(f"flag --{spec.flag} is declared differently by "
                                         f"{declared.methods} and {method}")
                    option = dataclasses.replace(declared, methods=declared.methods + (method,))
                flags[spec.flag] = option
        return tuple(flags.values())


def read_package(directories):
    """The Catalog of the method modules found in `directories` (a package's __path__)."""
    names, options, roles = [], {}, {}
    for module in sorted(pkgutil.iter_modules(directories), key=lambda found: found.name):
        path = os.path.join(module.module_finder.path, f"{module.name}.py")
        if module.ispkg or not os.path.exists(path):
            continue
        source = _Module(path)
        for method, class_name in source.registered():
            names.append(method)
            options[method] = source.option_specs(source.options_class(class_name))
            roles[method] = source.role(class_name)
    return Catalog(method_names=tuple(sorted(names)), method_options=options, roles=roles)


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
    """{option: flag name} of the command-line options of `method`."""
    return {option.option: option.flag for option in catalog().flags_of(method)}
