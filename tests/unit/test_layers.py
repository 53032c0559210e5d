"""The package's shape: folders in pipeline order over shared layers, nothing imports upward,
no import circle, no module over ~500 lines (read from the code, not from a list of files)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "p2vimage"

# Lower layers first. Stages are peers: one stage may use another only through a layer
# above both (build's refresh re-runs convert and reads sync's pass records, so build sits
# above them; the pipeline composes every stage; the CLI is the face nothing imports).
RANK = {
    "core": 0,
    "host": 1,
    "disk": 2,
    "guest": 3,
    "sync": 4, "convert": 4, "smoke": 4, "cloud": 4, "cutover": 4, "demo": 4,
    "build": 5,
    "pipeline": 6,
    "fleet": 7,
    "cli": 8, "__main__": 9,
}
MAX_LINES = 500


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports (anywhere in it, lazily or not)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("p2vimage.") or name == "p2vimage":
                found.add(name)
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {d for d in imports(p, known) if d != m and d != "p2vimage"}
            for m, p in mods.items()}


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({layer(m) for m in modules()} - set(RANK) - {"__init__"})
    assert not unplaced, f"give these a rank in RANK: {unplaced}"


def wrong_imports(deps: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer or sideways between two packages of the same rank."""
    wrong = []
    for module, targets in deps.items():
        here = layer(module)
        for dep in targets:
            there = layer(dep)
            if here == "__init__" or here == there:
                continue
            if there == "__init__" or RANK[there] >= RANK[here]:
                wrong.append(f"{module} ({here}) imports {dep} ({there})")
    return sorted(wrong)


def circles(deps: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(deps.get(v, ())):
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

    for v in sorted(deps):
        if v not in index:
            visit(v)
    return found


def test_nothing_imports_upward_or_sideways() -> None:
    wrong = wrong_imports(graph())
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    assert not circles(graph())


def test_modules_are_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in modules().items()}
    big = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not big, big


def test_the_checks_can_fail() -> None:
    """The rules are not vacuous: made-up upward, sideways and circular imports are caught,
    and the real graph is read (the cli imports the stages, the stages the core)."""
    made_up = {"p2vimage.disk.mbr": {"p2vimage.convert.stage"},
               "p2vimage.smoke.stage": {"p2vimage.cloud.glance", "p2vimage.core.errors"},
               "p2vimage.cli.a": {"p2vimage.cli.b"}, "p2vimage.cli.b": {"p2vimage.cli.a"}}
    assert wrong_imports(made_up) == [
        "p2vimage.disk.mbr (disk) imports p2vimage.convert.stage (convert)",
        "p2vimage.smoke.stage (smoke) imports p2vimage.cloud.glance (cloud)"]
    assert circles(made_up) == [["p2vimage.cli.a", "p2vimage.cli.b"]]
    real = graph()
    assert "p2vimage.core.errors" in real["p2vimage.build.stage"]
    assert any(d.startswith("p2vimage.convert.") for d in real["p2vimage.cli.main"])
