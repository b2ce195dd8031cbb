"""``/billing`` acknowledgement time under uvicorn while Stripe takes 2 s, next to a bare signed-request
verification.

Three processes besides this one: the sandbox (``--latency-ms`` on every request), a fake Slack Web API
(``tests/fakes/slack_api.py``: users.info for the access check, the response URLs), and uvicorn serving
``bot.asgi`` with the Slack app (``bot.slack.app.build_slack_app``) over the shared Redis. The load
generator (this process) posts signed slash commands at a steady rate: customers not in the cache (the
lookup needs Stripe) and customers in it (the card is the acknowledgement). An ack is the HTTP response
Slack waits for (it must come within 3 s). The baseline is the same uvicorn serving an endpoint that
only verifies Slack's signature (``slack_sdk``'s ``SignatureVerifier``) and answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from typing import Any

import httpx
from common import REDIS_URL, SANDBOX_KEY, Figures, free_port, median, percentile, table

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-1111-2222-benchtoken"
ACCOUNT = "acct_1SandboxBillingLens"


def _fake_slack(ports: Any) -> None:
    """The fake Slack Web API process: serves until terminated."""
    from tests.fakes.slack_api import FakeSlackAPI

    with FakeSlackAPI() as fake:
        ports.put(fake.port)
        while True:
            time.sleep(3600)


def _app(port: int, stripe_url: str, slack_url: str, prefix: str) -> None:
    """uvicorn serving ``bot.asgi`` with the Slack app, as ``billing serve`` does (no worker)."""
    import uvicorn

    from bot.asgi import build_asgi_app
    from bot.runtime import load_settings, open_runtime
    from bot.slack.app import build_deps, build_slack_app, slack_web_client

    async def main() -> None:
        settings = load_settings(
            STRIPE_API_KEY=SANDBOX_KEY, STRIPE_API_BASE=stripe_url, REDIS_URL=REDIS_URL,
            BILLING_KEY_PREFIX=prefix, STRIPE_ACCOUNT_ID=ACCOUNT, SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_API_URL=slack_url,
        )
        async with open_runtime(settings) as runtime:
            assert runtime.store is not None
            client = slack_web_client(settings)
            deps = build_deps(runtime, client)
            app = build_asgi_app(settings=settings, store=runtime.store, webhook_secret="whsec_bench",
                                 tenant=runtime.store.tenant,
                                 slack_app=build_slack_app(runtime, deps=deps, client=client))
            config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
            await uvicorn.Server(config).serve()

    asyncio.run(main())


async def _verify_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least a Slack endpoint must do: read the body, check the signature, answer 200."""
    from slack_sdk.signature import SignatureVerifier

    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = bool(message.get("more_body"))
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    timestamp = headers.get("x-slack-request-timestamp", "")
    ok = timestamp.isdigit() and SignatureVerifier(SIGNING_SECRET).is_valid(
        body=body, timestamp=timestamp, signature=headers.get("x-slack-signature", ""),
    )
    status = 200 if ok else 401
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _bare(port: int) -> None:
    import uvicorn

    uvicorn.Server(uvicorn.Config(_verify_only, host="127.0.0.1", port=port, log_level="warning",
                                  access_log=False, lifespan="off")).run()


class SlackStack:
    """The fake Slack, the app and the bare endpoint, each in its own process, for one Redis prefix."""

    def __init__(self, stripe_url: str, prefix: str) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.stripe_url, self.prefix = stripe_url, prefix
        self.processes: list[Any] = []
        self.app_port, self.bare_port = free_port(), free_port()
        self.slack_root = ""

    def __enter__(self) -> SlackStack:
        ports = self.context.Queue()
        self._start(_fake_slack, ports)
        slack_port = ports.get(timeout=30)
        self.slack_root = f"http://127.0.0.1:{slack_port}"
        self._start(_app, self.app_port, self.stripe_url, f"{self.slack_root}/api/", self.prefix)
        self._start(_bare, self.bare_port)
        for port in (self.app_port, self.bare_port):
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the Slack app did not start") from None
                    time.sleep(0.05)
        return self

    def _start(self, target: Any, *args: Any) -> None:
        process = self.context.Process(target=target, args=args, daemon=True)
        process.start()
        self.processes.append(process)

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.join(10)

    def command(self, text: str, n: int) -> bytes:
        from tests.fakes.slack_requests import slash_command_body

        return slash_command_body(text=text, response_url=f"{self.slack_root}/response/bench{n}")


async def _post_at_rate(port: int, bodies: list[bytes], rate: float) -> list[tuple[float, int, str]]:
    """Each body POSTed at its slot of a steady rate; (seconds to the response, status, body text)."""
    from tests.fakes.slack_requests import signed_headers

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                 limits=httpx.Limits(max_connections=200)) as http:
        await http.get("/healthz")

        async def one(i: int, body: bytes) -> tuple[float, int, str]:
            await asyncio.sleep(i / rate)
            headers = signed_headers(body, SIGNING_SECRET)
            start = time.perf_counter()
            response = await http.post("/slack/events", content=body, headers=headers)
            return time.perf_counter() - start, response.status_code, response.text

        return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies))))


async def measure(stack: SlackStack, uncached: list[str], cached: list[str], rate: float) -> Figures:
    """Acks of ``uncached`` then ``cached`` emails at ``rate``/s, then the bare endpoint with the
    same bodies."""
    cold_bodies = [stack.command(email, i) for i, email in enumerate(uncached)]
    warm_bodies = [stack.command(email, len(uncached) + i) for i, email in enumerate(cached)]
    cold = await _post_at_rate(stack.app_port, cold_bodies, rate)
    warm = await _post_at_rate(stack.app_port, warm_bodies, rate)
    bare = await _post_at_rate(stack.bare_port, cold_bodies + warm_bodies, rate)
    for seconds, status, text in (*cold, *warm, *bare):
        if status != 200:
            raise RuntimeError(f"an ack failed ({status}, {seconds:.2f} s): {text[:200]}")
    if not all("Looking up" in text or "Bench User" in text for _, _, text in cold):
        raise RuntimeError("an uncached lookup was acknowledged with neither a card nor 'Looking up'")
    if not all("Bench User" in text for _, _, text in warm):
        raise RuntimeError("a cached customer was not acknowledged with the card")
    cold_s, warm_s, bare_s = ([r[0] for r in rows] for rows in (cold, warm, bare))
    return {
        "uncached_p50": median(cold_s), "uncached_p99": percentile(cold_s, 99),
        "cached_p50": median(warm_s), "cached_p99": percentile(warm_s, 99),
        "bare_p50": median(bare_s), "bare_p99": percentile(bare_s, 99),
    }


async def bench(count: int, rate: float, latency_ms: float) -> list[tuple[str, str, str]]:
    from common import cached_world
    from stripe_proc import StripeProcess
    from world import email_of, history

    with StripeProcess() as stripe_proc:
        async with cached_world(stripe_proc.url, count) as world:
            stripe_proc.load(history(count, world.price_id, int(time.time()), 3, offset=count))
            prefix = world.store.prefix.split(":", 1)[0]
            stripe_proc.set_faults(latency_ms=latency_ms)
            with SlackStack(stripe_proc.url, prefix) as stack:
                f = await measure(stack, [email_of(count + i) for i in range(count)],
                                  [email_of(i) for i in range(count)], rate)

    def ms(x: float) -> str:
        return f"{x * 1000:.1f} ms"

    return [
        ("commands each", f"{count}", f"{rate:g}/s; Stripe latency {latency_ms:g} ms"),
        ("ack p50, not cached", ms(f["uncached_p50"]), ""),
        ("ack p99, not cached", ms(f["uncached_p99"]), "goal <= 100 ms"),
        ("ack p50, cached (the card)", ms(f["cached_p50"]), ""),
        ("ack p99, cached (the card)", ms(f["cached_p99"]), "goal <= 100 ms"),
        ("bare verification p50", ms(f["bare_p50"]), ""),
        ("bare verification p99", ms(f["bare_p99"]), ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=40, help="commands of each kind")
    parser.add_argument("--rate", type=float, default=10.0, help="commands per second")
    parser.add_argument("--latency-ms", type=float, default=2000.0)
    args = parser.parse_args()
    rows = asyncio.run(bench(args.n, args.rate, args.latency_ms))
    table("/billing acknowledgement vs a bare signed-request verification", rows)


if __name__ == "__main__":
    main()
