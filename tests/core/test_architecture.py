"""The seams hold: core/pipeline/monitor never import a modality, and no module imports itself back."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "streamer"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every streamer module ``path`` imports, at module level or inside functions (lazy imports too)."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("streamer")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("streamer"):
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                sub_path = ROOT.parent / (sub.replace(".", "/") + ".py")
                sub_pkg = ROOT.parent / sub.replace(".", "/") / "__init__.py"
                out.add(sub if (sub_path.is_file() or sub_pkg.is_file()) else target)
    return out - {mod}


GRAPH = {_module(p): _imports(p) for p in ROOT.rglob("*.py")}


def test_core_pipeline_and_monitor_never_import_a_modality():
    offenders = {m: sorted(i for i in deps if i.startswith("streamer.modalities"))
                 for m, deps in GRAPH.items()
                 if m.startswith(("streamer.core", "streamer.pipeline", "streamer.monitor"))}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_modalities_do_not_import_each_other():
    for m, deps in GRAPH.items():
        if m.startswith("streamer.modalities."):
            own = ".".join(m.split(".")[:3])
            others = {d for d in deps if d.startswith("streamer.modalities.") and not d.startswith(own)}
            assert not others, f"{m} imports {others}"


def test_no_import_circles():
    """Depth-first search for a cycle in the module import graph (lazy imports included)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if d not in GRAPH:
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)
