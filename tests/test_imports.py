"""The package's import graph: no cycles, and the core imports neither the pytest layer nor the presentation.

The graph is read from the source with ``ast``, every import statement wherever it stands: at the
top, inside a function (the lazy imports that keep plugin loading light) and under
``TYPE_CHECKING``. A lazy import still ties two modules together, so it counts.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest_judgeopt

PACKAGE = Path(pytest_judgeopt.__file__).resolve().parent
NAME = "pytest_judgeopt"
PYTEST_LAYER = {"plugin", "options", "run_state", "items", "hooks", "defaults"}
PRESENTATION = {"report", "html_report", "progress", "text", "optimize_text"}
PYTEST_PACKAGES = {"pytest", "_pytest", "pluggy", "xdist"}


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted names inside the package ("" for its __init__), with each file and whether it is a package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def imports(name: str, path: Path, is_package: bool, known: set[str]) -> tuple[set[str], set[str]]:
    """The package's modules this module imports, and the top-level names of outside packages it imports."""
    inside, outside = set(), set()
    here = name.split(".") if name else []
    package = here if is_package else here[:-1]

    def add(target: list[str], names: list[str]) -> None:
        for alias in names:  # `from . import hooks` imports the module hooks; `from .x import f` imports x
            sub = ".".join([*target, alias])
            inside.add(sub if sub in known else ".".join(target))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == NAME:
                    inside.add(".".join(parts[1:]))
                else:
                    outside.add(parts[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                add(base + (node.module.split(".") if node.module else []), [a.name for a in node.names])
            elif node.module and node.module.split(".")[0] == NAME:
                add(node.module.split(".")[1:], [a.name for a in node.names])
            elif node.module and node.module != "__future__":
                outside.add(node.module.split(".")[0])
    inside.discard(name)
    return inside, outside


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = modules()
    inside, outside = {}, {}
    for name, (path, is_package) in known.items():
        inside[name], outside[name] = imports(name, path, is_package, set(known))
    return inside, outside


def shown(name: str) -> str:
    return name or "__init__"


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    """What the other tests rest on: imports inside functions and under TYPE_CHECKING are edges too."""
    inside, outside = graph()
    assert "session" in inside["run_state"]  # imported inside JudgeRun.session, never at the top
    assert "judge" in inside["interference"]  # under TYPE_CHECKING
    assert "rich" in outside["text"]  # inside render()
    assert "hooks" in inside["plugin"]  # `from . import hooks`, inside pytest_addhooks
    unresolved = {f"{shown(name)} -> {target}" for name, targets in inside.items() for target in targets
                  if target not in inside}
    assert unresolved == set()  # every relative import, in subpackages too, names a module of the package


def test_the_package_has_no_import_cycle() -> None:
    inside, _ = graph()
    try:
        tuple(graphlib.TopologicalSorter(inside).static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(shown(name) for name in exc.args[1])
        raise AssertionError(f"import cycle: {cycle}") from None


def test_the_core_imports_neither_the_pytest_layer_nor_the_presentation() -> None:
    inside, outside = graph()
    core = [name for name in inside if name.split(".")[0] not in PYTEST_LAYER | PRESENTATION]
    assert {"session", "judge", "stats", "spec", "interference", "lockfile", "llm"} <= set(core)
    problems = [f"{shown(name)} imports {', '.join(sorted(bad))}" for name in core
                if (bad := {m for m in inside[name] if m.split(".")[0] in PYTEST_LAYER | PRESENTATION}
                        | (outside[name] & PYTEST_PACKAGES))]
    assert problems == []
