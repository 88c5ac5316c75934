"""The project's modules import each other in one direction: no cycle among ``bench``, ``methods`` and
``tasks``, counting every import statement (at module level or inside a function, where a cycle would
otherwise hide). Only the code under ``if __name__ == "__main__":`` is left out: it never runs when
the module is imported. Parsed with ``ast``, nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods", "tasks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative: resolve against the importing module's package
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [f"{module}.{a.name}" for a in node.names] + [module]


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        todo = list(ast.parse(path.read_text(), str(path)).body)
        while todo:
            node = todo.pop()
            if _is_main_guard(node):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _imported(node, package)
                # ``from a import b``: the submodule a.b where there is one, else the module a
                found = [resolve(t) for t in targets[:-1] if t in modules] if isinstance(node, ast.ImportFrom) else []
                edges.update(t for t in (found or [resolve(t) for t in targets]) if t)
            todo.extend(ast.iter_child_nodes(node))
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_project_modules():
    graph = import_graph()
    assert "bench.run.protocol" in graph and "tasks.base" in graph and "methods.base" in graph
    assert cycles(graph) == [], "modules that import each other (directly or through others)"


def test_the_run_loop_does_not_reach_restoring_a_run():
    # restoring a run builds on the run loop's pieces (set-up, evaluation), never the other way round
    graph = import_graph()
    assert "bench.run.restore" not in graph["bench.run.protocol"] and "bench.run.protocol" not in graph["bench.run.restore"]
    assert "bench.run.protocol" not in graph["bench.io.checkpoint"]


def test_task_types_import_nothing_else_from_tasks():
    assert {m for m in import_graph()["tasks.types"] if m.startswith("tasks")} == set()


def test_the_run_loop_imports_neither_lm_eval_nor_the_benchmarks():
    # --track trackers are built by the command line (bench.lmeval.track) and handed to the run as callables
    graph = import_graph()
    reached, todo = set(), ["bench.run.protocol"]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert not {m for m in reached if m.startswith(("bench.lmeval", "bench.perf"))}


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_imports_inside_functions_only_in_the_command_line():
    # bench/__main__.py imports the one command being run, for start-up speed; the registries load
    # their entries through importlib. Anywhere else an import inside a function would hide a cycle.
    found = [f"{path.relative_to(ROOT)}:{node.lineno}"
             for name, path in _modules().items() if name != "bench.__main__"
             for fn in _functions(path) for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert found == []


def test_no_function_is_longer_than_a_screen():
    long = [f"{path.relative_to(ROOT)}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
            for path in _modules().values() for fn in _functions(path) if fn.end_lineno - fn.lineno + 1 > 80]
    assert long == []
