"""The engine's layers, read from its import statements: no loops, and imports only run downward.

icm_engine's packages by floor (docs/layout.md): core and backends at the bottom (core reads a
model only through the interface in backends/base.py; backends imports nothing else of the
engine), data and store above them, runs above those, evaluation above runs, cli on top, and
the studio (app/) above the whole engine. learners (fine-tuning) sits beside data and store:
it trains on what core and backends give it, and core's scalable search reaches it only through
the FoldLearner protocol that runs/ fills in. A module may import its own package and any lower
floor. Every import counts, those inside functions and under TYPE_CHECKING too: a lazy import is
a dependency all the same.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "icm_engine"
FLOORS = {"core": 0, "backends": 0, "data": 1, "store": 1, "learners": 1, "runs": 2, "evaluation": 3, "cli": 4}
# Imports across one floor, each with its reason.
SIDEWAYS = {("core", "icm_engine.backends.base")}  # the interface the scorer asks a model through


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The icm_engine modules `path` imports, relative imports resolved; `from pkg import module`
    names the module itself."""
    package = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name == "icm_engine" or name.startswith("icm_engine.")}


def graph() -> dict[str, set[str]]:
    modules = engine_modules()
    return {name: imports(path, set(modules)) - {name} for name, path in modules.items()}


def floor_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


def test_every_engine_module_lives_in_a_layer_package():
    loose = [m for m in engine_modules() if m != "icm_engine" and floor_package(m) is None]
    assert not loose, f"modules outside the layer packages {sorted(FLOORS)}: {loose}"


def test_imports_only_run_downward():
    wrong = []
    for module, targets in graph().items():
        here = floor_package(module)
        for target in targets:
            there = floor_package(target)
            if here is None or there is None or here == there or (here, target) in SIDEWAYS:
                continue
            if FLOORS[there] >= FLOORS[here]:
                wrong.append(f"{module} (floor {FLOORS[here]}) imports {target} (floor {FLOORS[there]})")
    assert not wrong, "imports that do not run downward:\n" + "\n".join(sorted(wrong))


def test_no_import_loops():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    loops = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                loops.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not loops, "import loops:\n" + "\n".join(loops)


def test_no_private_name_is_borrowed_across_modules():
    borrowed = []
    for module, path in engine_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                borrowed += [f"{module} takes {a.name} from {node.module or '.'}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert not borrowed, "\n".join(borrowed)


def test_the_engine_never_imports_the_studio():
    for module, path in engine_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not [n for n in names if n.split(".")[0] in ("app", "streamlit")], module


def test_pages_read_through_the_services_module():
    """Every page reads the database through app/services.py (cached readers), never manager.store."""
    for path in sorted((ROOT / "app").rglob("*.py")):
        if path.name == "services.py":
            continue
        reaches = [node.lineno for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Attribute) and node.attr == "store"]
        assert not reaches, f"{path.relative_to(ROOT)} reads .store at lines {reaches}"
