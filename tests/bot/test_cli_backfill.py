"""`billing backfill`, `resync`, `reconcile` end to end: the sandbox over HTTP, a real Redis."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from typer.testing import CliRunner

from billing.cache.connections import open_redis
from billing.cache.store import RedisStore
from billing.ports import Tenant
from bot.cli import build_cli
from bot.cli_backfill import parse_since
from sandbox.core import ACCOUNT_ID
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle


def run(args: list[str], sandbox: SandboxHandle, redis_url: str, prefix: str, **env: str | None) -> Any:
    base: dict[str, str | None] = {
        "STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url, "REDIS_URL": redis_url,
        "BILLING_KEY_PREFIX": prefix, "BILLING_STRIPE_RETRIES": "1", "BILLING_STRIPE_RATE": "200",
        "BILLING_ALLOW_SECRET_KEY": None,
    }
    return CliRunner().invoke(build_cli(), args, env={**base, **env})


def one_sentence(result: Any) -> str:
    message: str = result.stderr.strip()
    assert message and "\n" not in message and "Traceback" not in message
    return message


T = TypeVar("T")


@dataclass
class Inspect:
    """Reads what the command stored, each call on its own event loop (the CLI runs its own)."""

    redis_url: str
    prefix: str

    def __call__(self, read: Callable[[RedisStore], Awaitable[T]]) -> T:
        async def go() -> T:
            client = await open_redis(self.redis_url)
            try:
                return await read(RedisStore(client, Tenant(ACCOUNT_ID, livemode=False), prefix=self.prefix))
            finally:
                await client.aclose()

        return asyncio.run(go())


@pytest.fixture
def inspect(redis_url: str, key_prefix: str) -> Iterator[Inspect]:
    yield Inspect(redis_url, key_prefix)
    asyncio.run(unlink_prefix(redis_url, key_prefix))


def test_backfill_then_resync_then_reconcile(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, inspect: Inspect
) -> None:
    result = run(["backfill", "--windows", "3"], sandbox, redis_url, key_prefix)
    assert result.exit_code == 0, result.stderr
    health = inspect(lambda store: store.health())
    assert health.customers_cached > 10 and health.backfill_finished_at is not None
    assert f"Backfilled {health.customers_cached:,} customers" in result.stdout
    assert "Reconciled" in result.stdout
    [jane] = inspect(lambda store: store.customer_ids_for_email("jane@acme.com"))
    context = inspect(lambda store: store.get_context(jane))
    assert context is not None and context.status == "past_due"

    resumed = run(["backfill", "--resume", "--windows", "3"], sandbox, redis_url, key_prefix)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resumed, 16 of 16 windows already done" in resumed.stdout

    sandbox.control.pay_invoice(next(i.id for i in context.recent_invoices if i.status == "open"))
    synced = run(["reconcile"], sandbox, redis_url, key_prefix)
    assert synced.exit_code == 0, synced.stderr
    context = inspect(lambda store: store.get_context(jane))
    assert context is not None and context.payment_status != "failed"

    again = run(["resync", "--windows", "2"], sandbox, redis_url, key_prefix)
    assert again.exit_code == 0, again.stderr
    assert inspect(lambda store: store.health()).customers_cached == health.customers_cached


def test_bad_since_is_one_sentence_exit_2(sandbox: SandboxHandle, redis_url: str, key_prefix: str) -> None:
    result = run(["backfill", "--since", "last tuesday"], sandbox, redis_url, key_prefix)
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in one_sentence(result)


def test_memory_store_is_refused(sandbox: SandboxHandle, key_prefix: str) -> None:
    result = run(["resync"], sandbox, "memory://x", key_prefix)
    assert result.exit_code == 2
    assert "REDIS_URL" in one_sentence(result)


def test_stripe_down_is_exit_3(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, inspect: Inspect
) -> None:
    sandbox.control.set_faults(error_probability=1.0, path_prefix="/v1/customers")
    result = run(["backfill"], sandbox, redis_url, key_prefix)
    assert result.exit_code == 3
    assert "Stripe" in one_sentence(result)


def test_redis_down_is_exit_3(sandbox: SandboxHandle, key_prefix: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run(["reconcile"], sandbox, f"redis://127.0.0.1:{port}/0", key_prefix)
    assert result.exit_code == 3
    assert "Redis" in one_sentence(result)


def test_parse_since() -> None:
    assert parse_since(None) is None
    assert parse_since("1700000000") == 1_700_000_000
    assert parse_since("2024-01-02") == 1_704_153_600


def test_the_summary_counts_one_of_a_kind_in_the_singular() -> None:
    # "1 events", "1 disputes, 1 credit notes" before.
    from billing.sync.backfill import BackfillReport, Plan
    from billing.sync.reconcile import ReconcileReport
    from bot.cli_backfill import _summary

    report = BackfillReport(
        resumed=False, plan=Plan(start=0, end=1, parts=1, started_at=0.0), windows_total=1,
        windows_skipped=0, contexts_built=1, seconds=0.5,
        fetched={"customers": 1, "subscriptions": 2, "disputes": 1, "credit_notes": 1},
    )
    text = _summary(report, ReconcileReport(since=0, listed=1, queued=0, already_applied=1))
    assert text == (
        "Backfilled 1 customer in 0.5 s (1 window); fetched 1 customer, 2 subscriptions, 0 invoices, "
        "0 charges, 1 dispute, 1 credit note.\n"
        "Reconciled 1 event since 1970-01-01T00:00:00Z: 0 applied, 1 already applied."
    )
