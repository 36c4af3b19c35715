"""The public surface: every documented name imports as the documented kind, no function shadows a module,
and no public module reaches into another module's private names.

Implementation lives in private modules (``unlearnx/sparse/_masks.py``); each subpackage re-exports a flat
API in ``__all__`` (``unlearnx.sparse.masks`` is the function, and no module of that name competes with it).
A public module may import *private modules* (shared internals such as ``unlearnx._validation``), never a
``_``-prefixed function, class or constant of another module.
"""

import ast
import importlib
import inspect
import pathlib
import pkgutil
import re
import types

import pytest

import unlearnx

ROOT = pathlib.Path(unlearnx.__file__).parent
SUBPACKAGES = ("continual", "data", "erase", "eval", "models", "sparse", "train", "unlearn")
MODULES = (
    "checkpoint",
    "diffusers_io",
    "diffusion",
    "fisher",
    "parallel",
    "repeated_linear",
    "testbed",
    "tree",
)


def _public_modules() -> list[pathlib.Path]:
    paths = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if not any(p.startswith("_") and p != "__init__" for p in parts):
            paths.append(path)
    return paths


def test_the_package_lists_its_subpackages_and_modules():
    assert {"continual", "erase", "fisher", "sparse", "tree", "unlearn"} <= set(unlearnx.__all__)
    for name in (*SUBPACKAGES, *MODULES):
        module = importlib.import_module(f"unlearnx.{name}")
        assert isinstance(module, types.ModuleType)
        assert module.__doc__, f"unlearnx.{name} has no module docstring"


@pytest.mark.parametrize("package", [*SUBPACKAGES, *MODULES])
def test_every_exported_name_resolves_to_a_documented_object(package):
    module = importlib.import_module(f"unlearnx.{package}")
    exported = getattr(module, "__all__", None)
    assert exported, f"unlearnx.{package} has no __all__"
    assert len(set(exported)) == len(exported), f"unlearnx.{package}.__all__ repeats a name"
    for name in exported:
        value = getattr(module, name)  # AttributeError: a listed name that does not exist
        if isinstance(value, types.ModuleType):  # a documented namespace (``unlearnx.eval.induction``)
            assert value.__name__ == f"unlearnx.{package}.{name}" and value.__doc__, value
        elif inspect.isfunction(value) or inspect.isclass(value):
            assert inspect.getdoc(value), f"unlearnx.{package}.{name} has no docstring"


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_no_public_name_shadows_a_submodule(package):
    module = importlib.import_module(f"unlearnx.{package}")
    public_files = [m.name for m in pkgutil.iter_modules(module.__path__) if not m.name.startswith("_")]
    shadowed = [
        name
        for name in public_files
        if not isinstance(
            getattr(module, name, importlib.import_module(f"unlearnx.{package}.{name}")), types.ModuleType
        )
    ]
    assert not shadowed, (
        f"unlearnx.{package}: these names are both a submodule and another object: {shadowed}"
    )


def _private_names_taken(path: pathlib.Path) -> list[str]:
    """``from m import _x`` of a non-module ``_x``, and ``m._x`` attribute reads of an imported unlearnx
    module ``m``, in one source file."""
    tree = ast.parse(path.read_text())
    modules: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                except ImportError:
                    if alias.name.startswith("_"):
                        found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            source = modules.get(node.value.id, "")
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if private and source.startswith("unlearnx"):
                found.append(f"line {node.lineno}: {source}.{node.attr}")
    return found


def test_no_public_module_imports_a_private_name_from_another_module():
    offences = {str(p.relative_to(ROOT)): _private_names_taken(p) for p in _public_modules()}
    offences = {path: found for path, found in offences.items() if found}
    assert not offences, offences


def test_the_scan_catches_both_forms(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "from unlearnx.tree import _nothing_public\nfrom unlearnx import _validation\n"
        "from unlearnx import tree\nx = tree._hidden\ny = _validation.is_traced\n"
    )
    assert _private_names_taken(source) == [
        "line 1: from unlearnx.tree import _nothing_public",
        "line 4: unlearnx.tree._hidden",
    ]


def _public_callables():
    """(qualified name, object) of every function and class exported by a public module or namespace."""
    found = {}
    for package in (*SUBPACKAGES, *MODULES):
        module = importlib.import_module(f"unlearnx.{package}")
        spaces = [module] + [v for v in map(module.__dict__.get, module.__all__) if inspect.ismodule(v)]
        for space in spaces:
            for name in getattr(space, "__all__", ()):
                value = getattr(space, name)
                if inspect.isfunction(value) or (inspect.isclass(value) and value.__module__ != "typing"):
                    found[f"{space.__name__}.{name}"] = value
    return sorted(found.items())


def test_every_public_function_and_class_documents_args_returns_and_a_runnable_example():
    incomplete = []
    for name, value in _public_callables():
        doc = inspect.getdoc(value) or ""
        parameters = [p for p in inspect.signature(value).parameters if p not in ("self", "cls")]
        needs = {
            "Args": bool(parameters) and not re.search(r"^(Args|Attributes):", doc, re.M),
            "Returns": inspect.isfunction(value) and not re.search(r"^(Returns|Yields):", doc, re.M),
            "example": ">>>" not in doc,
        }
        if any(needs.values()):
            incomplete.append(f"{name} lacks {', '.join(k for k, v in needs.items() if v)}")
    assert not incomplete, "\n".join(incomplete)


def test_every_public_function_has_a_return_annotation():
    missing = [
        name
        for name, value in _public_callables()
        if inspect.isfunction(value) and inspect.signature(value).return_annotation is inspect.Signature.empty
    ]
    assert not missing, missing
