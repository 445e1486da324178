"""The package's shape: imports point one way (no cycle, counting imports inside
functions too), modules stay small, and the top level holds only the core."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medusa_mlx"
MAX_LINES = 400
MAX_TOP_LEVEL_MODULES = 24  # 20 at the layout commit (4 of them python -m shims); +safe_files
# (#18), a leaf every reader uses; +lookup.py (#21), a drafter beside draft.py; +conversation.py
# (prompt encoding and the conversation cache the chat and the server share, out of generate.py);
# +context.py (#20), the second head kind beside heads.py
# Modules allowed over MAX_LINES, each with the reason it is not split.
LONG_MODULES: dict[str, str] = {}
APPS = {"training", "conversion", "chat", "bench", "server"}
# ``python -m medusa_mlx.train`` and friends, as the README shows them: one-line
# shims into training/, the only core modules allowed to point at an app.
SHIMS = {"medusa_mlx.train", "medusa_mlx.evaluate", "medusa_mlx.tree_search", "medusa_mlx.head_vocab"}


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


def part(module: str) -> str:
    """core, loaders, or the app subpackage a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "core"


def test_imports_point_one_way():
    """core <- loaders <- apps: loaders use no other part of the package but its
    errors and safe_files (both leaves: the typed errors, and the checks every
    reader of an untrusted file makes), the core reaches loaders only through
    load.py and apps never, and apps do not import each other."""
    wrong = []
    for source, targets in import_graph().items():
        for target in targets:
            a, b = part(source), part(target)
            if a == b or target in ("medusa_mlx.errors", "medusa_mlx.safe_files"):
                continue
            allowed = (
                (a in APPS and b in ("core", "loaders"))
                or (source == "medusa_mlx.load" and b == "loaders")
                or (source in SHIMS and b == "training")
            )
            if not allowed:
                wrong.append(f"{source} -> {target}")
    assert wrong == []


def test_modules_stay_small():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= set(LONG_MODULES), long


def test_top_level_holds_the_core_only():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
