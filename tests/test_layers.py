"""The package's layers import downward only, and no two modules import each other in a circle.

Layers, bottom to top (docs/architecture.md): the base modules (errors, config), envs, data, nets,
algos (agents and their loss terms), run (loops, sessions, checkpoints, logging, collection, the
registry and the programmatic API), eval (statistics, reports, the demo), and the entry points (cli,
the package root). Every import counts, also one inside a function.
"""

import ast
from pathlib import Path

import coworld

ROOT = Path(coworld.__file__).parent
LAYERS = ["base", "envs", "data", "nets", "algos", "run", "eval", "top"]
BASE = {"coworld.errors", "coworld.config", "coworld.presets"}
TOP = {"coworld", "coworld.cli", "coworld.__main__"}  # the package root offers coworld.train / evaluate


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    if module in TOP:
        return LAYERS.index("top")
    top = module.split(".")[1] if module.count(".") else ""
    if module in BASE or top not in LAYERS:
        return LAYERS.index("base")
    return LAYERS.index(top)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("coworld")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coworld") and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from coworld import envs`
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py") if "_vendor" not in p.parts}
    out = {}
    for name, path in modules.items():
        targets = set()
        for imp in imports(path):
            if imp not in modules and imp.rsplit(".", 1)[0] + "" in modules and imp.count(".") > 1:
                imp = imp.rsplit(".", 1)[0]  # `from coworld.x import name` (a function) -> module coworld.x
            if imp in modules and imp not in (name, "coworld"):  # every module runs the root first anyway
                targets.add(imp)
        out[name] = targets
    return out


def test_imports_go_downward_only():
    upward = [f"{a} (layer {LAYERS[layer(a)]}) imports {b} (layer {LAYERS[layer(b)]})"
              for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circles():
    g = graph()
    # package __init__ files re-export their own modules: an edge into a package's own submodule is fine
    g = {a: {b for b in t if not b.startswith(a + ".")} for a, t in g.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(g[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)
