#!/usr/bin/env python3
"""tools/layers.py: the package graph of ``nasblade`` -- layers, imports that run upward, cycles.

Reads the code with grimp (import-linter's graph library), collapses it to ``nasblade``'s
subpackages and top-level modules, and prints: each package's layer (longest import chain to a
package that imports nothing of ours), the imports that run against the intended order (the
``layers`` contract in ``.importlinter``), the import cycles between packages, and the largest
modules. Used for the before/after figures of the restructuring; ``make lint`` enforces the same
contracts through ``lint-imports``.

Usage: tools/layers.py [--root DIR]   (DIR holds blade/ and .importlinter; default: this repo)
"""

from __future__ import annotations

import argparse
import configparser
import json
import sys
from pathlib import Path

import grimp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    root = args.root.resolve()
    sys.path[:0] = [str(root / "blade"), str(root / "operator")]
    graph = grimp.build_graph("nasblade", cache_dir=None)

    def top(mod: str) -> str:
        parts = mod.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else mod

    edges: dict[str, set[str]] = {}
    for mod in graph.modules:
        a = top(mod)
        edges.setdefault(a, set())
        for imported in graph.find_modules_directly_imported_by(mod):
            b = top(imported)
            if b != a and b != "nasblade":
                edges[a].add(b)
    # cycles: strongly connected components of more than one package
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    comp_of = {v: i for i, c in enumerate(sccs) for v in c}
    depth: dict[int, int] = {}

    def layer(c: int) -> int:
        if c not in depth:
            below = {comp_of[w] for v in sccs[c] for w in edges[v]} - {c}
            depth[c] = 1 + max((layer(b) for b in below), default=0)
        return depth[c]

    layers = {v: layer(comp_of[v]) for v in edges}
    order = _contract_layers(root)
    rank = {pkg: i for i, group in enumerate(order) for pkg in group}
    upward = sorted((a, b) for a, bs in edges.items() for b in bs
                    if a in rank and b in rank and rank[b] < rank[a])
    sizes = sorted(((sum(1 for _ in p.open()), str(p.relative_to(root)))
                    for p in (root / "blade" / "nasblade").rglob("*.py")), reverse=True)[:6]
    result = {
        "layers": max(layers.values()),
        "packages": len(edges),
        "upwardImports": [f"{a} -> {b}" for a, b in upward],
        "cycles": [sorted(c) for c in sccs if len(c) > 1],
        "largestModules": {name: n for n, name in sizes},
        "layerOf": dict(sorted(layers.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    print(json.dumps(result, indent=1))
    return 0


def _contract_layers(root: Path) -> list[list[str]]:
    """The intended order, top first, from the ``layers`` contract of ``.importlinter``."""
    cfg = configparser.ConfigParser()
    cfg.read(root / ".importlinter")
    for section in cfg.sections():
        if cfg[section].get("type") == "layers" and cfg[section].get("containers", "").strip() == "nasblade":
            lines = [ln.strip() for ln in cfg[section]["layers"].splitlines() if ln.strip()]
            return [[f"nasblade.{p.strip()}" for p in ln.replace("|", ":").split(":")] for ln in lines]
    return []


if __name__ == "__main__":
    sys.exit(main())
