"""What a ``get_stripe_context`` tool call adds to the lookup itself, for a cached customer (target: p99
of the added cost <= 1 ms).

One runtime (the in-process sandbox, REDIS_URL under a private prefix): the demo customers are looked
up once so they are cached, then N rounds each time ``TenantRuntime.lookup`` alone, the LangChain
tool's ``ainvoke`` (lookup + rules + bounded content + LangChain's own overhead) and ``BillingTools``
directly (the same without LangChain), interleaved so drift hits all three alike. Every measured
lookup is a cache hit (checked). The audited lookup is the same in all three: one audit entry each.

The difference of two latency distributions is noisy on a busy machine, so the tool's own work is
also timed alone: the same LangChain tool over a runtime whose lookup hands back a context already
read from the cache (no I/O), i.e. exactly what a tool call adds to the lookup; its CPU time (the
thread's, which a busy machine's scheduling does not inflate) is reported beside the wall time.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Awaitable, Callable

from common import REDIS_URL, SANDBOX_KEY, Figures, in_sandbox, median, percentile, table, unlink_prefix

from billing.cache.audit import Surface
from billing.domain.models import BillingContext
from bot.runtime import Runtime, load_settings, open_runtime
from rules import RulesFile
from tools.context_tools import BillingToolkit

EMAILS = ("jane@acme.com", "bigco@example.com", "trial@startup.io", "shared@example.com")


class _InHand:
    """A runtime whose lookup returns contexts already read from the cache: the tool's work alone."""

    def __init__(self, runtime: Runtime, contexts: dict[str, BillingContext]) -> None:
        self._runtime = runtime
        self._contexts = contexts
        self.default = self

    async def lookup(self, query: str, *, user: str, surface: Surface, refresh: bool = False,
                     team: str | None = None) -> BillingContext:
        return self._contexts[query]

    def rules(self) -> RulesFile:
        return self._runtime.rules()


async def _timed(samples: list[float], call: Callable[[], Awaitable[object]],
                 cpu: list[float] | None = None) -> None:
    start, start_cpu = time.perf_counter(), time.thread_time()
    await call()
    samples.append(time.perf_counter() - start)
    if cpu is not None:
        cpu.append(time.thread_time() - start_cpu)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def measure(url: str, n: int) -> Figures:
    """The four timings of ``n`` interleaved rounds (see the module docstring), in seconds."""
    prefix = f"blbench{uuid.uuid4().hex[:8]}"
    settings = load_settings(STRIPE_API_KEY=SANDBOX_KEY, STRIPE_API_BASE=url, REDIS_URL=REDIS_URL,
                             BILLING_KEY_PREFIX=prefix)
    try:
        async with open_runtime(settings) as runtime:
            tenant = runtime.default
            toolkit = BillingToolkit(runtime, user="bench")
            tool = next(t for t in toolkit.get_tools() if t.name == "get_stripe_context")
            for email in EMAILS:  # fill the cache, then prove every email is a hit
                await tenant.lookup(email, user="bench", surface="tool")
                context = await tenant.lookup(email, user="bench", surface="tool")
                assert context.source == "cache", email
            in_hand = {e: await tenant.lookup(e, user="bench", surface="tool") for e in EMAILS}
            alone = next(t for t in BillingToolkit(_InHand(runtime, in_hand)).get_tools()
                         if t.name == "get_stripe_context")
            lookups: list[float] = []
            tool_calls: list[float] = []
            core_calls: list[float] = []
            tool_alone: list[float] = []
            alone_cpu: list[float] = []
            for i in range(n):
                email = EMAILS[i % len(EMAILS)]
                await _timed(lookups, lambda e=email: tenant.lookup(e, user="bench", surface="tool"))
                await _timed(tool_calls, lambda e=email: tool.ainvoke({"email": e}))
                await _timed(core_calls, lambda e=email: toolkit.core.stripe_context(e))
                await _timed(tool_alone, lambda e=email: alone.ainvoke({"email": e}), alone_cpu)
            content, artifact = await toolkit.core.stripe_context(EMAILS[0])
            assert artifact is not None and artifact["source"] == "cache" and '"source":"cache"' in content
    finally:
        await unlink_prefix(prefix)
    return {
        "lookup_p50": median(lookups), "lookup_p99": percentile(lookups, 99),
        "tool_p50": median(tool_calls), "tool_p99": percentile(tool_calls, 99),
        "alone_p50": median(tool_alone), "alone_p99": percentile(tool_alone, 99),
        "alone_cpu_p50": median(alone_cpu), "alone_cpu_p99": percentile(alone_cpu, 99),
        "core_p50": median(core_calls),
    }


async def bench(url: str, n: int) -> list[tuple[str, str, str]]:
    f = await measure(url, n)
    added_p50 = f["tool_p50"] - f["lookup_p50"]
    added_p99 = f["tool_p99"] - f["lookup_p99"]
    return [
        ("calls each", f"{n:,}", ""),
        ("lookup p50", _ms(f["lookup_p50"]), ""),
        ("lookup p99", _ms(f["lookup_p99"]), ""),
        ("tool call p50", _ms(f["tool_p50"]), ""),
        ("tool call p99", _ms(f["tool_p99"]), ""),
        ("added by the tool p50", _ms(added_p50), "difference of the two"),
        ("added by the tool p99", _ms(added_p99), "difference of the two"),
        ("tool work alone p50", _ms(f["alone_p50"]), "no I/O: rules, content, artifact, LangChain"),
        ("tool work alone p99", _ms(f["alone_p99"]), "target <= 1 ms"),
        ("tool work alone, CPU p50 / p99", f"{_ms(f['alone_cpu_p50'])} / {_ms(f['alone_cpu_p99'])}",
         "the thread's CPU time"),
        ("without LangChain p50", _ms(f["core_p50"] - f["lookup_p50"]), "BillingTools directly"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2_000, help="measured rounds (after warming the cache)")
    args = parser.parse_args()
    rows = in_sandbox(lambda url: bench(url, args.n))
    table("get_stripe_context vs TenantRuntime.lookup, cached customer", rows)


if __name__ == "__main__":
    main()
