"""Imports point down: conf imports nothing of flows or tasks, tasks/runtime no stage, tasks never flows; the
CLI (flows/cli/) is imported by nothing else, and the flows import neither it nor the process management
(flows/ops/); no module imports itself back through others. Read from the code's imports (inside functions and under
TYPE_CHECKING too), so a lazy import cannot hide an upward edge."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("generation", "validation", "training", "evaluation", "registry")
FLOWS_PACKAGES = ("cli", "ops")  # flows/ subpackages that are not flows: the command, the processes it starts


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("conf", "flows", "tasks"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(("alignflow", *path.relative_to(ROOT).with_suffix("").parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alignflow"):
                submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                edges[name] |= submodules or ({node.module} & modules.keys())
            elif isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names} & modules.keys()
    return edges


def _area(module: str) -> str:
    parts = module.split(".")
    if parts[1] == "tasks":
        return f"tasks.{parts[2]}" if len(parts) > 2 else "tasks"
    if parts[1] == "flows" and len(parts) > 2 and parts[2] in FLOWS_PACKAGES:
        return f"flows.{parts[2]}"
    return parts[1]


def test_imports_point_down():
    upward = []
    for source, targets in _edges(_modules()).items():
        for target in targets:
            a, b = _area(source), _area(target)
            conf_up = a == "conf" and b != "conf"
            runtime_up = a == "tasks.runtime" and b.removeprefix("tasks.") in STAGES
            tasks_up = a.startswith("tasks") and b.startswith("flows")
            cli_up = b == "flows.cli" and a != "flows.cli"
            flows_up = a == "flows" and b == "flows.ops"
            if conf_up or runtime_up or tasks_up or cli_up or flows_up:
                upward.append((source, target))
    assert not upward, f"imports that point up: {upward}"


def test_no_import_cycle():
    edges = _edges(_modules())
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"
