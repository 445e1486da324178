"""The package's shape: imports point one way (no cycle, counting imports inside
functions too), modules stay small, and the top level holds only the core."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medusa_mlx"
MAX_LINES = 400
MAX_TOP_LEVEL_MODULES = 22
# Modules allowed over MAX_LINES, each with the reason it is not split.
LONG_MODULES: dict[str, str] = {
    "medusa_mlx.bench.runs": "split by the commit after the layout move (kept whole so git sees a rename)",
    "medusa_mlx.training.data": "split by the commit after the layout move (kept whole so git sees a rename)",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Package modules ``path`` imports anywhere in the file (module level or in a
    function), resolved to the module itself (``from . import x`` counts x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_of(path).split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)
    me = module_name(path)
    return {m for m in found if m in known and m != me and not me.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    # A package's __init__ is imported by everything under it, so it cannot be part
    # of a cycle that matters for layering; leave it out as a target.
    return {m: {t for t in imported_modules(p, known) if not files[t].name == "__init__.py"}
            for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_package():
    assert find_cycle(import_graph()) is None


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_imports_count(tmp_path):
    path = PACKAGE / "chat" / "session.py"
    assert "medusa_mlx.load" in imported_modules(path, set(import_graph()))  # imported inside load_session


def test_modules_stay_small():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= set(LONG_MODULES), long


def test_top_level_holds_the_core_only():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
