"""The benchmark scripts under bench/ start: each Python one imports what it uses and answers
``--help`` (bench/nbd once named a module that had moved and did not start at all). Running
them is the benchmarks' job (docs/performance.md), not the suite's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p for p in BENCH.iterdir() if p.is_file() and p.read_text().startswith("#!/usr/bin/env python3"))


def test_the_python_benchmarks_are_found() -> None:
    assert {"nbd", "raid", "copy"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_starts(script: Path) -> None:
    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stdout + r.stderr
