"""Each benchmark runs standalone at a tiny size and prints its figure lines (values never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("script", "args", "lines"), [
    ("lookup.py", ["--n", "50"], ["lookup p50", "lookup p99"]),
    ("redis_bytes.py", ["--n", "20", "--months", "2"], ["per customer, all keys"]),
    ("webhooks.py", ["--n", "200", "--connections", "4", "--rate", "50", "--seconds", "1"],
     ["accepted events/s", "applied events/s", "lag p99 at 50/s"]),
    ("tool_call.py", ["--n", "50"], ["lookup p99", "tool call p99", "added by the tool p99"]),
])
def test_bench_prints_its_figures(script: str, args: list[str], lines: list[str], redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "REDIS_URL": redis_url}, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for line in lines:
        assert line in result.stdout
