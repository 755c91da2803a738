"""The package's shape: no import cycles (function-level imports included), no module importing a layer above
it, and tunelab's own protocols used through their members, not probed with ``hasattr``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"

# Lower layers never import higher ones; a layer may import its own (without cycles).
LAYERS = [
    {"errors", "offline", "version", "registry", "progress", "probabilities", "tags"},
    {"data", "config", "prompts", "metrics", "models", "plots", "batching", "inference", "hooks", "artifact",
     "checkpoint", "rundir", "calibration", "synonyms", "textedits", "distributed", "images", "image_weights", "averaging",
     "sharding"},
    {"causal_lm", "sentence_embeddings", "onnx_model", "genai_model", "runtimes", "augment", "search_space", "runs",
     "speech"},
    {"tasks"},
    {"methods", "train", "adapters", "explain", "adversarial"},
    {"predictor"},
    {"strategies", "analysis", "attack"},
    {"api", "export", "export_check", "export_genai", "compress", "serve", "continual", "search", "ray_backend"},
    {"cli", "demo", "__main__"},
    {""},  # the package itself: tunelab/__init__.py
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["tunelab", *parts])


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every tunelab module ``name`` imports, anywhere in the file (function bodies too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target.startswith("tunelab") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else ""
    return next(i for i, members in enumerate(LAYERS) if top in members)


def test_every_module_has_a_layer() -> None:
    for name in graph():
        layer(name)


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_module_imports_a_layer_above_it() -> None:
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert not upward, "imports of a higher layer: " + "; ".join(sorted(upward))


def test_the_named_rules_hold() -> None:
    edges = graph()
    for name, targets in edges.items():
        if name.startswith("tunelab.tasks"):
            assert not {t for t in targets if t.split(".")[1] in ("strategies", "api", "cli", "predictor", "train")}, name
        if name == "tunelab.metrics":
            assert not {t for t in targets if t.startswith("tunelab.tasks")}
    assert edges["tunelab.registry"] <= {"tunelab.errors"}


def test_the_cycle_checker_finds_a_cycle(tmp_path: Path, monkeypatch) -> None:
    """The checks above can fail: a planted pair of modules importing each other is reported."""
    pkg = tmp_path / "tunelab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from .registry import X\n")
    (pkg / "registry.py").write_text("def f():\n    from . import errors\n")
    monkeypatch.setattr(__import__(__name__), "SRC", pkg)
    with pytest.raises(pytest.fail.Exception, match="import cycle: tunelab.errors -> tunelab.registry -> tunelab.errors"):
        test_no_import_cycles()


def test_tunelab_protocols_are_not_probed_with_hasattr() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr" and node.args:
                probed = ast.unparse(node.args[0])
                if any(word in probed for word in ("task", "predictor", "strategy", "method", "adaptation")):
                    offenders.append(f"{path.name}: hasattr({probed}, ...)")
    assert not offenders
