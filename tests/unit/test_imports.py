"""The project's modules import each other in one direction: no cycles, even through imports made
inside functions, and the library never imports the tools it is kept free of."""

from pathlib import Path

import pytest

from runner.keys import imported_modules

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"tlpipe": REPO / "src" / "tlpipe", "project": REPO / "project", "tasks": REPO / "tasks", "runner": REPO / "runner", "flows": REPO / "flows"}


def project_modules() -> dict[str, Path]:
    found = {}
    for top, folder in ROOTS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((top, *parts[:-1])) if parts[-1] == "__init__" else ".".join((top, *parts))
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it names in any import statement}; `from pkg import sub` counts as
    an import of pkg.sub when that is a module, else of pkg."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path, main_guard=True):
            if imported in modules:
                targets.add(imported)
            elif imported.rpartition(".")[0] in modules and imported.rpartition(".")[0] != name:
                targets.add(imported.rpartition(".")[0])  # `from pkg import function`
        graph[name] = targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_project_modules():
    graph = import_graph()
    assert len(graph) > 60 and graph["flows.pipeline"] >= {"flows.stages", "flows.promotion", "runner.snapshot"}
    assert cycles(graph) == []


@pytest.mark.parametrize("tool", ["prefect", "mlflow", "dvc", "project", "tasks", "runner", "flows"])
def test_the_library_imports_none_of_the_tools(tool):
    for name, path in project_modules().items():
        if name.startswith("tlpipe"):
            assert not any(m == tool or m.startswith(tool + ".") for m in imported_modules(path, main_guard=True)), name


def code_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module's code (docstrings left out: prose may say where a function is used)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs]


def test_the_library_names_no_stage_params_file_or_declaration():
    """The library takes plain arguments: no stage of dvc.yaml, no params/ file, no dvc.yaml in its code."""
    import re

    from runner.spec import load_pipeline

    stages = [spec.name for spec in load_pipeline(REPO)]
    pipeline = re.compile(rf"^({'|'.join(stages)})$|(^|/)(data|params)/({'|'.join(stages)})\b|params/|dvc\.(yaml|lock)")
    found = [f"{path.relative_to(REPO)}:{line}: {text!r}" for name, path in project_modules().items()
             if name.startswith("tlpipe") for line, text in code_strings(path) if pipeline.search(text)]
    assert found == []
    assert pipeline.search("distill") and pipeline.search("data/prune/kept.npy") and not pipeline.search("distilled")


def test_stage_modules_import_no_machinery():
    """A stage loads, calls the library and writes; the runner does everything around it."""
    for name, path in project_modules().items():
        if name.startswith("tasks."):
            outside = {m for m in imported_modules(path) if m.split(".")[0] in ("runner", "flows", "prefect", "mlflow", "dvc")}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_no_top_level_package_is_shadowed_by_a_flow_module():
    """Prefect loads a deployment's entrypoint (flows/retrain.py) with flows/ first on sys.path, so a
    module there named like a top-level package (flows/pipeline.py against a `pipeline` package) would
    be imported in its place on every worker."""
    flow_modules = {path.stem for path in ROOTS["flows"].glob("*.py")}
    assert not flow_modules & (set(ROOTS) - {"flows"})
