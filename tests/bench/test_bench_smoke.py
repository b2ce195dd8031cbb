"""Each benchmark runs standalone at a tiny size and prints its figure lines, and the driver behind
``make bench`` runs every row at a tiny size and writes its results file (values never asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], redis_url: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "REDIS_URL": redis_url}, cwd=ROOT, check=False,
    )


@pytest.mark.parametrize(("script", "args", "lines"), [
    ("lookup.py", ["--n", "50", "--customers", "10"], ["lookup p50", "lookup p99", "p99 ratio"]),
    ("redis_bytes.py", ["--n", "20", "--months", "2"], ["per customer, all keys"]),
    ("webhooks.py",
     ["--n", "100", "--customers", "10", "--connections", "4", "--rate", "50", "--seconds", "1"],
     ["accept ratio", "applied events/s (1 EventWorker)", "applied events/s (2 EventWorkers)",
      "bare Redis pipeline events/s", "lag p99 at 50/s"]),
    ("tool_call.py", ["--n", "50"], ["lookup p99", "tool call p99", "added by the tool p99"]),
    ("cold_lookup.py", ["--n", "1"], ["ours / floor", "naive / ours"]),
    ("backfill_rate.py", ["--customers", "10", "--naive-pages", "8"],
     ["floor (needed / rate)", "naive sequential"]),
    ("slack_ack.py", ["--n", "2"], ["ack p99, not cached", "ack p99, cached", "bare verification p99"]),
    ("cli_start.py", ["--n", "1"], ["billing lookup", "added by billing lookup"]),
])
def test_bench_prints_its_figures(script: str, args: list[str], lines: list[str], redis_url: str) -> None:
    result = _run([str(ROOT / "bench" / script), *args], redis_url)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in lines:
        assert line in result.stdout


def test_make_bench_driver_prints_one_table_and_writes_results(redis_url: str, tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    result = _run([str(ROOT / "bench" / "run_all.py"), "--tiny", "--results", str(results)], redis_url, 600)
    assert result.returncode == 0, result.stderr[-2000:]
    header = result.stdout.splitlines()[0].split()
    assert header[:2] == ["row", "ours"] and header[-1] == "met?"
    for row in ("cached lookup", "cold lookup vs floor", "cold lookup vs naive", "Stripe on every question",
                "webhook accept", "webhook apply", "2 workers vs 1", "webhook lag", "backfill vs floor",
                "backfill vs naive", "memory per cached customer", "Slack ack", "tool call", "CLI start"):
        assert row in result.stdout, row
    written = results.read_text()
    assert "cores" in written and "Redis" in written and "Python" in written and "spread" in written
