"""``billing lookup`` of a cached customer, the whole process, next to ``python -c pass``.

Both run ``--n`` times, interleaved, with the same interpreter and environment; bytecode is cached as
in a normal install (``PYTHONPYCACHEPREFIX`` in a temporary directory, one warm-up run each), so the
figure is start-up and the lookup, not compiling the sources. The customer is cached first (the
standalone run backfills the sandbox demo into a private prefix). Goal: at most 0.3 s above the bare
interpreter. ``python -X importtime`` on the same command shows where the rest goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REDIS_URL, SANDBOX_KEY, Figures, cached_world, in_sandbox, median, table

ROOT = Path(__file__).resolve().parent.parent
BILLING = Path(sys.executable).parent / "billing"


def environment(stripe_url: str, prefix: str, account: str, pycache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(REDIS_URL=REDIS_URL, STRIPE_API_KEY=SANDBOX_KEY, STRIPE_API_BASE=stripe_url,
               BILLING_KEY_PREFIX=prefix, STRIPE_ACCOUNT_ID=account, PYTHONPATH=str(ROOT),
               PYTHONPYCACHEPREFIX=pycache)
    return env


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str], float]:
    """Wall seconds, the finished process, and the CPU seconds it used (user + system: what a busy
    machine's scheduling does not inflate)."""
    start, cpu = time.perf_counter(), _cpu()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    return time.perf_counter() - start, done, _cpu() - cpu


LIBRARIES = "import redis.asyncio, pydantic, pydantic_settings, rich.console, rich.table, typer"
"""What a cached ``billing lookup`` cannot do without (the cache client, the models and settings, the
card, the command line): importing them alone is the floor of lazy imports."""


def measure(env: dict[str, str], query: str, expect: str, runs: int) -> Figures:
    """Medians of ``runs`` interleaved runs of the bare interpreter, of importing the libraries the
    command needs, and of ``billing lookup query``."""
    bare: list[float] = []
    libraries: list[float] = []
    ours: list[float] = []
    bare_cpu: list[float] = []
    ours_cpu: list[float] = []
    lookup = [str(BILLING), "lookup", query]
    for i in range(runs + 1):
        seconds, _, cpu = _timed([sys.executable, "-c", "pass"], env)
        if i:
            bare.append(seconds)
            bare_cpu.append(cpu)
        seconds, _, _ = _timed([sys.executable, "-c", LIBRARIES], env)
        if i:
            libraries.append(seconds)
        seconds, done, cpu = _timed(lookup, env)
        if done.returncode != 0 or expect not in done.stdout:
            raise RuntimeError(f"billing lookup failed ({done.returncode}): {done.stderr[-500:]}")
        if "cache as of" not in done.stdout:
            raise RuntimeError("billing lookup did not answer from the cache: the figure would be wrong")
        if i:
            ours.append(seconds)
            ours_cpu.append(cpu)
    return {"ours": median(ours), "bare": median(bare), "added": median(ours) - median(bare),
            "libraries": median(libraries), "ours_cpu": median(ours_cpu),
            "added_cpu": median(ours_cpu) - median(bare_cpu)}


async def _cache_demo(url: str, runs: int) -> Figures:
    async with cached_world(url, 0) as world:
        with tempfile.TemporaryDirectory() as pycache:
            prefix = world.store.prefix.split(":", 1)[0]
            env = environment(url, prefix, world.store.tenant.account_id, pycache)
            return await asyncio.to_thread(measure, env, "jane@acme.com", "Jane Doe", runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10, help="runs of each command")
    args = parser.parse_args()
    f = in_sandbox(lambda url: _cache_demo(url, args.n))
    table("billing lookup (cached customer), whole process, vs python -c pass", [
        ("billing lookup", f"{f['ours']:.3f} s", "median"),
        ("python -c pass", f"{f['bare']:.3f} s", "median"),
        ("added by billing lookup", f"{f['added']:.3f} s", "goal <= 0.3 s"),
        ("importing the libraries it needs", f"{f['libraries']:.3f} s", "redis, pydantic, rich, typer"),
        ("CPU added by billing lookup", f"{f['added_cpu']:.3f} s", "user + system, over python -c pass"),
    ])


if __name__ == "__main__":
    main()
