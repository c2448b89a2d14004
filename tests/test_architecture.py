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


def _imports_matplotlib(name: str, path: Path) -> bool:
    return any(m == "matplotlib" or m.startswith("matplotlib.") for m in _imports(name, path))


def test_the_report_numbers_import_no_matplotlib_even_inside_functions():
    """The numbers (``accounting.report``) stay apart from the drawing (``accounting.plots``)."""
    assert not _imports_matplotlib("qcourier.accounting.report",
                                   MODULES["qcourier.accounting.report"])


def test_only_the_plots_module_of_accounting_imports_matplotlib():
    assert {m for m in _importers_of(("matplotlib",))
            if m.startswith("qcourier.accounting")} == {"qcourier.accounting.plots"}


def test_a_matplotlib_import_inside_a_function_is_caught(tmp_path):
    """The check above must be able to fail: the layout before the split drew in report."""
    old = tmp_path / "report.py"
    old.write_text("def _figure():\n    from matplotlib.figure import Figure\n    return Figure()\n"
                   "def require():\n    import matplotlib  # noqa: F401\n")
    assert _imports_matplotlib("qcourier.accounting.report", old)
    old.write_text("def quantile(values, q):\n    import math\n    return math.nan\n")
    assert not _imports_matplotlib("qcourier.accounting.report", old)


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


#: The most lines a function or method body may have (issue 16: "no function or method body
#: over ~60 lines").
MAX_BODY_LINES = 60


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from a function's first statement to its last one's end, its docstring left out
    (a nested function counts in the function that holds it, and on its own)."""
    body = node.body
    if (len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1


def test_body_lines_counts_statements_not_the_docstring():
    [short, long_] = ast.parse('def f():\n    """Doc.\n\n    More."""\n    return 1\n\n'
                               "def g():\n" + "    x = 1\n" * 61).body
    assert (body_lines(short), body_lines(long_)) == (1, 61)


def test_no_function_body_is_over_60_lines():
    long_ = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (lines := body_lines(node)) > MAX_BODY_LINES:
                    long_.append(f"{name}.{node.name} (line {node.lineno}): {lines} lines")
    assert not long_, "split these functions:\n" + "\n".join(sorted(long_))


def test_no_catch_warnings_in_the_package():
    """``warnings.catch_warnings()`` swaps the process-wide filter list: on the worker threads
    that call the services, one thread's exit restores the filters another is using. The
    package sets filters instead (``qcourier.services.base.ignore_warnings_from``)."""
    users = [name for name, path in MODULES.items()
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute | ast.Name | ast.alias)
             and "catch_warnings" in (getattr(node, "attr", None), getattr(node, "id", None),
                                      getattr(node, "name", None))]
    assert users == []


#: The most parameters a function or method may take, ``self`` and ``cls`` not counted
#: (the project's rule: option objects instead of long parameter lists).
MAX_PARAMETERS = 8


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every parameter: positional, keyword-only, ``*args`` and ``**kwargs``; a leading
    ``self`` or ``cls`` left out."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    if positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    return len(positional) + len(args.kwonlyargs) + (args.vararg is not None) + (
        args.kwarg is not None)


def is_click_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether a click decorator (``@click.option``, ``@group.command``...) makes the
    function a command's callback: each of its options is a parameter."""
    for decorator in node.decorator_list:
        func = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(func, ast.Attribute) and (
                func.attr in ("command", "group")
                or isinstance(func.value, ast.Name) and func.value.id == "click"):
            return True
    return False


def test_parameter_count_counts_every_kind_but_self():
    [cls_] = ast.parse("class C:\n    def m(self, a, /, b, *c, d, **e): ...\n").body
    [plain, command, helper] = ast.parse(
        "def f(a, b=1, *, c): ...\n\n"
        "@click.command()\n@click.option('--x')\ndef g(x): ...\n\n"
        "@contextmanager\ndef h(): ...\n").body
    assert isinstance(cls_, ast.ClassDef) and isinstance(cls_.body[0], ast.FunctionDef)
    assert isinstance(plain, ast.FunctionDef) and isinstance(command, ast.FunctionDef)
    assert isinstance(helper, ast.FunctionDef)
    assert (parameter_count(cls_.body[0]), parameter_count(plain)) == (5, 3)
    assert (is_click_command(command), is_click_command(helper)) == (True, False)


def test_no_function_takes_more_than_8_parameters():
    long_ = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if name.startswith("qcourier.cli") and is_click_command(node):
                    continue
                if (count := parameter_count(node)) > MAX_PARAMETERS:
                    long_.append(f"{name}.{node.name} (line {node.lineno}): {count} parameters")
    assert not long_, "pass an options object to these functions:\n" + "\n".join(sorted(long_))
