"""The static checks CI runs with the tests: mypy and ruff (default settings),
and README's layer list against the package's import graph."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_mypy_finds_nothing() -> None:
    r = _run("mypy", "mogstored")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_finds_nothing() -> None:
    r = _run("ruff", "check", "mogstored")
    assert r.returncode == 0, r.stdout + r.stderr


def _layers() -> list[str]:
    """README's layer list, top first: the names of the Layout block's top-level
    entries below ``mogstored/`` (``node/`` -> ``node``, ``log.py`` -> ``log``)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    names = []
    for line in block.splitlines():
        m = re.match(r"  (\S+?)(?:/|\.py)\s", line + " ")
        if m:
            names.append(m.group(1))
    return names


def _imports() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports, anywhere
    in its body (functions and TYPE_CHECKING blocks included)."""
    pkg = ROOT / "mogstored"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in pkg.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in modules else node.module)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""  # "": the package's __init__ (its version), below all


def test_readme_layers_match_the_package() -> None:
    layers = _layers()
    assert layers[0] == "__main__" and "node" in layers and "log" in layers, layers
    assert {_layer_of(m) for m in _imports()} - {""} == set(layers)


def test_imports_point_down_the_layer_list_without_cycles() -> None:
    order = {name: i for i, name in enumerate(_layers())}
    order[""] = len(order)
    graph = _imports()
    upward = [f"{m} -> {dep}" for m, deps in graph.items() for dep in deps
              if order[_layer_of(dep)] < order[_layer_of(m)]]
    assert not upward, "imports against README's layer list: " + ", ".join(sorted(upward))
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, "import cycle: " + " -> ".join([*path[path.index(m):], m])
        if m in done:
            return
        for dep in sorted(graph[m]):
            visit(dep, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
