"""The package's import graph goes one way, from the interface down to the models, and no
module grows past 400 lines without saying why.

Every ``descent_opt`` import is read from the source (function-level imports included),
and each module sits in one layer of :data:`LAYERS`: a module may import its own layer or
lower ones, never a higher one. ``python tests/test_architecture.py`` prints the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "descent_opt"

LAYERS = (
    # foundations: no model, no JAX program of their own (or a generic one)
    ("_version", "schema", "rundir", "noise", "device_program", "execution", "distributed",
     "statistics", "faults", "dynamics", "rare_event"),
    # the models of the lander, its sensors, the ground and the guidance
    ("terrain", "navigation", "sensors", "guidance", "scenarios", "certification"),
    # the closed loop and what is computed from its outcomes
    ("simulate", "objectives", "device_statistics", "tally"),
    # engines: populations, optimisers, gain tables, reports, checkpoints
    ("population", "optimize", "optimize.gains", "optimize.interior_point",
     "optimize.thrust_schedule", "export", "report", "checkpoint", "replays", "envelope",
     "latent_flights", "worst_case", "sensitivity", "sobol"),
    # the run configuration
    ("config",),
    # jobs and the stages they are made of
    ("jobs", "stages", "jobs.robust_gains", "jobs.monte_carlo", "jobs.thrust_schedule",
     "jobs.export", "jobs.replay", "jobs.envelope",
     "jobs.rare_event", "jobs.worst_case", "jobs.sensitivity", "aggregate"),
    # interfaces: the command line and the package's front door
    ("cli", "__main__", "__init__"),
)  # fmt: skip
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (names relative to the package)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("descent_opt"):
                base = node.module.removeprefix("descent_opt").lstrip(".")
                for alias in node.names:
                    sub = f"{base}.{alias.name}".lstrip(".")
                    deps.add(sub if sub in modules else (base or "__init__"))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("descent_opt."):
                        deps.add(alias.name.removeprefix("descent_opt."))
        deps.discard(name)
        graph[name] = deps
    return graph


def _layer(name: str) -> int:
    (index,) = [i for i, layer in enumerate(LAYERS) if name in layer]
    return index


def test_every_module_has_a_layer():
    placed = [m for layer in LAYERS for m in layer]
    assert len(placed) == len(set(placed))
    assert set(_modules()) == set(placed)


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in import_graph().items()
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_long_modules_say_why():
    quiet = []
    for name, path in _modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if f"Over {MAX_LINES} lines" not in doc:
                quiet.append(f"{name}: {len(text.splitlines())} lines")
    assert not quiet, "modules over 400 lines without a reason in their docstring: " + ", ".join(
        quiet
    )


if __name__ == "__main__":
    for module, deps in sorted(import_graph().items(), key=lambda kv: (_layer(kv[0]), kv[0])):
        print(f"[{_layer(module)}] {module} -> {', '.join(sorted(deps)) or '-'}")
