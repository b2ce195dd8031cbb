"""`billing audit` and `billing forget` on the real Redis server, through the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from billing.cache.connections import open_redis
from tests.bot.test_cli_lookup import run, sandbox_env
from tests.fixtures_redis import unlink_prefix


@pytest.fixture
def env(sandbox: Any, redis_url: str, key_prefix: str) -> Iterator[dict[str, str | None]]:
    import asyncio

    yield {**sandbox_env(sandbox), "REDIS_URL": redis_url, "BILLING_KEY_PREFIX": key_prefix,
           "STRIPE_ACCOUNT_ID": "acct_clitests"}
    asyncio.run(unlink_prefix(redis_url, key_prefix))


async def keys_mentioning(redis_url: str, prefix: str, text: str) -> list[str]:
    client = await open_redis(redis_url)
    try:
        found = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            name = key.decode()
            if text in name:
                found.append(name)
                continue
            kind = await client.type(key)
            in_set = kind == b"set" and await client.sismember(key, text)
            points_at = kind == b"string" and (await client.get(key) or b"") == text.encode()
            if in_set or points_at:
                found.append(name)
        return found
    finally:
        await client.aclose()


def test_cli_lookups_are_audited_and_listed(env: dict[str, str | None]) -> None:
    assert run(["lookup", "jane@acme.com"], **env).exit_code == 0
    assert run(["lookup", "nobody@nowhere.example"], **env).exit_code == 1
    listed = run(["audit", "--json"], **env)
    assert listed.exit_code == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["query"], e["outcome"], e["surface"]) for e in entries] == [
        ("nobody@nowhere.example", "not_found", "cli"), ("jane@acme.com", "found", "cli"),
    ]
    jane = entries[1]["customer_id"]
    only_jane = run(["audit", "--json", "--customer", jane], **env)
    assert [json.loads(line)["query"] for line in only_jane.stdout.splitlines()] == ["jane@acme.com"]
    nobody = run(["audit", "--user", "U0NOBODY"], **env)  # "No lookups recorded yet." before
    assert nobody.exit_code == 0 and nobody.stdout == "No lookups match --user U0NOBODY.\n"
    bad = run(["audit", "--customer", "jane@acme.com"], **env)
    assert bad.exit_code == 2 and "cus_" in bad.stderr


async def test_forget_removes_every_cached_trace_and_is_recorded(
    env: dict[str, str | None], redis_url: str, key_prefix: str
) -> None:
    import asyncio

    looked_up = await asyncio.to_thread(run, ["lookup", "jane@acme.com", "--json"], **env)
    customer_id = json.loads(looked_up.stdout)["customer"]["id"]
    assert await keys_mentioning(redis_url, key_prefix, customer_id)  # cached: context, objects, index…

    forgot = await asyncio.to_thread(run, ["forget", "jane@acme.com"], **env)
    assert forgot.exit_code == 0, forgot.stderr
    assert f"Forgot {customer_id}" in forgot.stdout
    leftover = await keys_mentioning(redis_url, key_prefix, customer_id)
    assert leftover == []
    audit = await asyncio.to_thread(run, ["audit", "--json", "--customer", customer_id], **env)
    assert json.loads(audit.stdout.splitlines()[0])["query"] == "forget jane@acme.com"

    again = await asyncio.to_thread(run, ["forget", "jane@acme.com"], **env)
    assert again.exit_code == 1 and "Nothing cached" in again.stdout
    # By id too: nothing left is "Nothing cached" and exit 1 ("Forgot cus_… (0 keys)." and exit 0
    # before), and the audit trail gets no second "found" forget.
    by_id = await asyncio.to_thread(run, ["forget", customer_id], **env)
    assert by_id.exit_code == 1 and by_id.stdout == f"Nothing cached for {customer_id}.\n"
    audit = await asyncio.to_thread(run, ["audit", "--json", "--customer", customer_id], **env)
    assert [json.loads(line)["query"] for line in audit.stdout.splitlines()][:1] == [
        "forget jane@acme.com"
    ]
