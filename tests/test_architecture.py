"""The shape of the code: commands sit on top, shared code below them, one owner per concept (static checks)."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("src", "data_modules", "callbacks")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _is_command(tree: ast.Module) -> bool:
    """A module run as `python -m ...`: it ends in an `if __name__ == "__main__":` block."""
    return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


def _imports(name: str, tree: ast.Module) -> set[str]:
    """Every project module `name` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from src import animate`
    return {m for m in found if m in MODULES and m != name}


COMMANDS = {name for name, tree in TREES.items() if _is_command(tree)}
GRAPH = {name: _imports(name, tree) for name, tree in TREES.items()}


def test_the_commands_are_the_ones_the_readme_names():
    assert {"src.animate", "src.evaluate", "src.personalize", "src.upscale", "src.preprocess", "src.train", "src.demo",
            "src.sweep", "src.sample", "src.app", "src.export"} == COMMANDS


def test_no_module_imports_a_command():
    offenders = sorted(f"{name} imports {dep}" for name, deps in GRAPH.items() for dep in deps & COMMANDS)
    assert not offenders, offenders


def test_no_import_circle():
    """Depth-first search over the import graph (lazy imports included): no module reaches itself."""
    state, cycles = {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(GRAPH[node]):
            if dep.startswith(node + ".") or node.startswith(dep + "."):
                continue  # a package and its own submodules
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [dep]) if dep in path else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def _calls(tree: ast.Module, attr: str):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr]


def test_checkpoints_are_written_in_one_place():
    """torch.save of a checkpoint dict only in src/checkpoints.py; tests and benchmarks build theirs through it."""
    for name, tree in TREES.items():
        if name != "src.checkpoints":
            assert all(ast.unparse(c.func.value) != "torch" for c in _calls(tree, "save")), name
    for path in [*(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]:
        for call in _calls(ast.parse(path.read_text()), "save"):
            if ast.unparse(call.func.value) == "torch" and call.args and isinstance(call.args[0], ast.Dict):
                keys = {ast.unparse(k) for k in call.args[0].keys if k is not None}
                assert not keys & {"'state_dict'", "'hyper_parameters'"}, f"{path}:{call.lineno}"


def test_nothing_inside_the_package_calls_a_command_line():
    """Callers get results and exceptions from the typed functions, not exit codes from main(argv)."""
    offenders = [f"{name}:{c.lineno}" for name, tree in TREES.items() for c in _calls(tree, "main")
                 if c.args and isinstance(c.args[0], ast.List)]
    assert not offenders, offenders
