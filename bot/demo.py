"""``billing demo``: the whole product in a minute, on embedded defaults only.

A Stripe sandbox in-process, the cache in memory (``memory://``), Slack drawn on the console: a
backfill with its progress bar, three customers' cards, ``/billing`` through the real Slack handler
with a signed request, a subscription going ``past_due`` with its signed webhook through the real
endpoint and worker, the alert with priority and tags, the recovery in its thread, the worker's
renewal and trial reminders, the AI tool's content and the routing result; then what to do to connect
real Stripe and Slack.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.panel import Panel

from billing.domain.models import BillingContext
from billing.sync.backfill import Backfill
from billing.sync.worker import EventWorker
from bot.alerts import build_notifier, build_scheduler
from bot.asgi import build_asgi_app
from bot.runtime import Runtime, load_settings, open_runtime
from bot.slack.app import build_slack_app, slack_web_client
from bot.slack.console import ConsoleSlack
from bot.terminal_card import render_context

DEMO_KEY = "rk_test_billinglensdemo"
DEMO_ACCOUNT = "acct_1BillingLensDemo"
ALERT_CHANNEL = "CBILLINGALERTS"
CARDS = (
    ("jane@acme.com", "past due: the last invoice failed"),
    ("bigco@example.com", "high MRR: route to a senior agent"),
    ("trial@startup.io", "trialing: not paying yet"),
)
NEXT_STEPS = """[bold]Connect your own Stripe and Slack[/bold]
1. A restricted Stripe key with read access (README, "Running it against Stripe"):
   export STRIPE_API_KEY=rk_live_… STRIPE_ACCOUNT_ID=acct_… REDIS_URL=redis://127.0.0.1:6379/0
2. billing backfill, then a webhook endpoint at https://YOUR-HOST/stripe/webhook (STRIPE_WEBHOOK_SECRET).
3. Create the Slack app from manifest.yml; set SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET, BILLING_ALERT_CHANNEL.
4. billing serve (and billing worker processes as you grow); /billing someone@example.com in Slack."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signed(body: bytes, secret: str) -> dict[str, str]:
    from slack_sdk.signature import SignatureVerifier

    ts = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body) or ""
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded"}


async def _until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the demo waited {within:.0f} s for {what}")
        await asyncio.sleep(0.05)


class Story:
    """One run of the demo; ``console`` is where everything is shown."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.signing_secret = secrets.token_hex(16)
        self.webhook_secret = f"whsec_{secrets.token_hex(16)}"
        self.slack = ConsoleSlack(self._show_slack)

    def _show_slack(self, title: str, text: str) -> None:
        self.console.print(Panel(text, title=title, title_align="left", border_style="magenta"),
                           markup=False, highlight=False)

    def step(self, text: str) -> None:
        self.console.print(f"\n[bold cyan]▸ {text}[/bold cyan]")

    async def run(self) -> None:
        from sandbox.control import SandboxControl
        from sandbox.server import SandboxServer

        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with SandboxServer(dataset="demo") as stripe, SandboxControl(stripe.url) as control:
            settings = load_settings(
                STRIPE_API_KEY=DEMO_KEY, STRIPE_API_BASE=stripe.url, STRIPE_ACCOUNT_ID=DEMO_ACCOUNT,
                REDIS_URL=f"memory://demo-{uuid.uuid4().hex}", BILLING_DEMO="1",
                SLACK_BOT_TOKEN="xoxb-demo", SLACK_SIGNING_SECRET=self.signing_secret,  # noqa: S106
                SLACK_API_URL=self.slack.api_url(base), BILLING_ALERT_CHANNEL=ALERT_CHANNEL,
            )
            async with open_runtime(settings) as runtime:
                await self._backfill(runtime)
                contexts = [await runtime.service.lookup(q) for q, _ in CARDS]
                self._cards(runtime, contexts)
                await self._by_invoice_number(runtime, contexts[0])
                await self._live(runtime, control, base, port)
        self.console.print()
        self.console.print(Panel(NEXT_STEPS, border_style="green"))

    async def _backfill(self, runtime: Runtime) -> None:
        from bot.cli_backfill import ProgressDisplay

        assert runtime.store is not None
        self.step("Backfill: every customer of the sample Stripe account into the cache")
        with ProgressDisplay(self.console) as display:
            # A small account: its next invoices are previewed now (as `billing backfill --previews`),
            # so the cards show Stripe's figures rather than estimates from the subscriptions.
            report = await Backfill(runtime.gateway, runtime.store, observer=display, previews=True).run()
        self.console.print(f"{report.contexts_built:,} customers cached in {report.seconds:.1f} s.")

    def _cards(self, runtime: Runtime, contexts: list[BillingContext]) -> None:
        from bot.cli_lookup import routing_summary
        from rules import evaluate_rules

        self.step("Three customers, as a support agent sees them in the terminal")
        for (query, why), context in zip(CARDS, contexts, strict=True):
            self.console.print(f"\n[bold]{query}[/bold] — {why}")
            self.console.print(render_context(context))
            evaluation = evaluate_rules(context, runtime.rules(), datetime.now(UTC))
            self.console.print(routing_summary(evaluation), markup=False, highlight=False, soft_wrap=True)

    async def _by_invoice_number(self, runtime: Runtime, jane: BillingContext) -> None:
        """A customer found by what they paste: the number printed on the newest invoice of Jane's."""
        from billing.domain.matching import matched_by

        number = next((i.number for i in jane.recent_invoices if i.number), None)
        if number is None:
            return
        self.step(f"Found by the invoice number a customer pastes: billing lookup {number}")
        found = await runtime.service.lookup(number)
        who = f"{found.customer.name} ({found.customer.id})" if found.customer is not None else "nobody"
        self.console.print(f"{number} → {who}, {matched_by(found.query, found.match)}",
                           markup=False, highlight=False, soft_wrap=True)

    async def _live(self, runtime: Runtime, control: Any, base: str, port: int) -> None:
        import uvicorn

        store = runtime.store
        assert store is not None
        client = slack_web_client(runtime.settings)
        notifier = build_notifier(runtime, slack_client=client)
        worker = EventWorker(store, runtime.gateway, notifier, block_ms=50)
        app = build_asgi_app(
            settings=runtime.settings, store=store, webhook_secret=self.webhook_secret, tenant=store.tenant,
            worker=worker, slack_app=build_slack_app(runtime, client=client),
            extra_routes=self.slack.routes(),
        )
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        try:
            await _until(lambda: server.started, "the local server to start")
            # The sandbox signs and delivers webhooks as Stripe does; its control client is blocking.
            await asyncio.to_thread(control.register_webhook, f"{base}/stripe/webhook", self.webhook_secret)
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                await self._slash_command(http, base)
                await self._incident(runtime, control)
            await self._reminders(runtime, worker)
            await self._tool(runtime)
        finally:
            server.should_exit = True
            await serving

    async def _slash_command(self, http: httpx.AsyncClient, base: str) -> None:
        from urllib.parse import urlencode

        self.step("In Slack: /billing jane@acme.com (a signed request through the real Slack handler)")
        body = urlencode({
            "command": "/billing", "text": "jane@acme.com", "user_id": "UAGENT", "team_id": "TDEMO",
            "channel_id": "CSUPPORT", "response_url": self.slack.response_url(base, "cmd"),
            "trigger_id": "demo", "api_app_id": "ADEMO",
        }).encode()
        started = time.perf_counter()
        response = await http.post("/slack/events", content=body, headers=_signed(body, self.signing_secret))
        elapsed = (time.perf_counter() - started) * 1000
        ack = response.json() if response.content else {}
        from bot.slack.console import render_message

        self._show_slack(f"Slack · only visible to you · answered in {elapsed:.0f} ms", render_message(ack))
        if "Looking up" in str(ack):
            await _until(lambda: bool(self.slack.responses), "the card to follow")

    async def _incident(self, runtime: Runtime, control: Any) -> None:
        context = await runtime.service.lookup("bigco@example.com")
        assert context.subscriptions
        sub_id = context.subscriptions[0].id
        self.step("In Stripe: BigCo's subscription goes past_due (webhook → endpoint → worker → Slack)")
        await asyncio.to_thread(control.set_subscription_status, sub_id, "past_due")
        await _until(lambda: any(not m.get("thread_ts") for m in self.slack.posted), "the past_due alert")
        self.step("In Stripe: BigCo pays; the recovery is a reply in the alert's thread")
        await asyncio.to_thread(control.set_subscription_status, sub_id, "active")
        await _until(lambda: any(m.get("thread_ts") for m in self.slack.posted), "the recovery reply")

    def _posted(self, transition: str) -> bool:
        for message in self.slack.posted:
            metadata = message.get("metadata") or {}
            if isinstance(metadata, str):
                metadata = json.loads(metadata)
            if (metadata.get("event_payload") or {}).get("transition") == transition:
                return True
        return False

    async def _reminders(self, runtime: Runtime, worker: EventWorker) -> None:
        assert runtime.store is not None
        self.step("The worker's scheduler: Renewal Yearly Ltd renews in 5 days, a trial ends in 2; the rules "
                  "remind 7 and 3 days ahead, once per period (no Stripe event needed)")
        # Started here rather than with the worker, so the reminders come after the story above.
        worker.scheduler = build_scheduler(runtime.store, runtime.rules)
        await _until(lambda: self._posted("subscription.renewal_upcoming"), "the renewal reminder")
        await _until(lambda: self._posted("subscription.trial_ending"), "the trial reminder")

    async def _tool(self, runtime: Runtime) -> None:
        from tools.context_tools import BillingTools

        tools = BillingTools(runtime)
        self.step("The AI reply drafter calls get_stripe_context(\"jane@acme.com\"); the model reads:")
        content, _ = await tools.stripe_context("jane@acme.com")
        self.console.print(content, markup=False, highlight=False, soft_wrap=True)
        self.step("…and evaluate_routing_rules(\"jane@acme.com\"):")
        routing, _ = await tools.routing("jane@acme.com")
        self.console.print(routing, markup=False, highlight=False, soft_wrap=True)


def run_demo(console: Console | None = None) -> None:
    console = console or Console()
    console.print(
        "[bold]Billing Lens demo[/bold]: a sample Stripe account (a built-in sandbox), the cache in memory, "
        "and Slack drawn right here. Nothing to configure."
    )
    asyncio.run(Story(console).run())
