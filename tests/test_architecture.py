"""The import rules of README's Development section, checked on the source itself.

Every import counts, including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "qcourier"

#: Layers, lowest first: a module may import its own layer (without a cycle) and lower ones.
SHARED = ("qcourier.errors", "qcourier.files", "qcourier.config", "qcourier.provenance",
          "qcourier.circuits")
LOWER = ("qcourier.services", "qcourier.experiments")
CORE = ("qcourier.ledger", "qcourier.store", "qcourier.submit", "qcourier.collect",
        "qcourier.accounting")
TOP = ("qcourier.cli", "qcourier.__main__")


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)
    return out


def _internal_graph() -> dict[str, set[str]]:
    """Module -> the qcourier modules it imports. An import of a module's own parent package
    (``from qcourier.cli import budget`` from inside ``qcourier.cli``) is not an edge: Python
    imports the parents of every module anyway, so it says nothing about the design."""
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {m for m in _imports(name, path) if m in MODULES and m != name
                       and not name.startswith(m + ".")}
    return graph


def _layer(module: str) -> int:
    for rank, group in enumerate((SHARED, LOWER, CORE, TOP)):
        if any(module == g or module.startswith(g + ".") for g in group):
            return rank
    if module == "qcourier":
        return 0
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_architecture.py")


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_module_is_in_a_layer_and_imports_only_down():
    bad = []
    for module, targets in _internal_graph().items():
        for target in targets:
            if target == "qcourier":
                continue
            if _layer(target) > _layer(module):
                bad.append(f"{module} -> {target}")
            elif _layer(target) == _layer(module) == 1 and _package(target) != _package(module):
                bad.append(f"{module} -> {target} (services and experiments are independent)")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = _internal_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _importers_of(prefixes: tuple[str, ...]) -> set[str]:
    return {name for name, path in MODULES.items()
            if any(m == p or m.startswith(p + ".") for m in _imports(name, path) for p in prefixes)}


def test_only_the_ibm_adapter_and_the_fake_backends_import_qiskit_ibm_runtime():
    assert _importers_of(("qiskit_ibm_runtime",)) <= {"qcourier.services.ibm",
                                                      "qcourier.services.fake_backends"}


def test_only_the_cli_imports_click_or_rich():
    assert {m for m in _importers_of(("click", "rich")) if _layer(m) < 3} == set()


def test_the_ledger_knows_nothing_of_qiskit():
    assert {m for m in _importers_of(("qiskit", "qiskit_aer", "stim"))
            if m.startswith("qcourier.ledger")} == set()


def test_a_control_graph_with_a_cycle_and_an_upward_import_is_caught(tmp_path):
    """The checks above must be able to fail: feed them a bad graph."""
    global MODULES
    saved = MODULES
    try:
        a = tmp_path / "a.py"
        a.write_text("from qcourier.cli import main\nfrom qcourier.files import x\n")
        b = tmp_path / "b.py"
        b.write_text("def f():\n    from qcourier.errors import E\n")
        c = tmp_path / "c.py"
        c.write_text("from qcourier.files import y\n")
        MODULES = {"qcourier.files": a, "qcourier.errors": b, "qcourier.cli": c,
                   "qcourier.cli.main": c}
        try:
            test_every_module_is_in_a_layer_and_imports_only_down()
        except AssertionError as exc:
            assert "qcourier.files -> qcourier.cli" in str(exc)
        else:
            raise AssertionError("the upward import went unnoticed")
        b.write_text("def f():\n    from qcourier.files import E\n")
        a.write_text("from qcourier.errors import x\n")
        MODULES = {"qcourier.files": a, "qcourier.errors": b}
        try:
            test_no_import_cycle_even_through_imports_inside_functions()
        except AssertionError as exc:
            assert "qcourier.errors" in str(exc) and "qcourier.files" in str(exc)
        else:
            raise AssertionError("the cycle went unnoticed")
    finally:
        MODULES = saved


def test_importing_every_module_changes_no_environment_variable():
    names = sorted(n for n in MODULES if n != "qcourier.__main__")
    code = ("import importlib, os, sys\nbefore = dict(os.environ)\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "changed = sorted(k for k in set(before) | set(os.environ) "
            "if before.get(k) != os.environ.get(k))\nprint(changed)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


#: The longest a function's or method's body may be, in lines (README, Development).
MAX_BODY_LINES = 60


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of each function in ``source`` whose body is over MAX_BODY_LINES lines
    (from its first statement after the docstring to its last line, nested functions
    included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (len(body) > 1 and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                body = body[1:]
            lines = node.end_lineno - body[0].lineno + 1
            if lines > MAX_BODY_LINES:
                found.append((node.name, lines))
    return found


def test_no_function_body_is_over_sixty_lines():
    too_long = [f"{name}.{function} ({lines} lines)" for name, path in sorted(MODULES.items())
                for function, lines in long_functions(path.read_text())]
    assert too_long == []


def test_the_length_check_sees_a_long_function():
    body = "".join(f"    x{n} = {n}\n" for n in range(MAX_BODY_LINES + 1))
    assert long_functions(f"def f():\n{body}") == [("f", MAX_BODY_LINES + 1)]
    shorter = body[body.index("\n") + 1:]
    assert long_functions(f"def f():\n{shorter}") == []
    assert long_functions(f'def f():\n    """Doc."""\n{shorter}') == []


def test_no_process_wide_warning_filters_are_swapped_per_call():
    """``warnings.catch_warnings()`` swaps the process's filter list; from worker threads it
    loses or leaks filters. Filters are installed once instead."""
    users = [name for name, path in MODULES.items() if "catch_warnings" in path.read_text()]
    assert users == []
