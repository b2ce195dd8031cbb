"""Issue #11 (CLI start) and issue #9 item 1: a cached ``billing lookup`` is start-up and one Redis read.

1. With Stripe hanging (a socket that accepts and never answers) a cached lookup still prints the card,
   and the hanging Stripe receives nothing: nothing on the hit path waits on Stripe.
2. A cached lookup, run whole, never imports the libraries only other commands use (Slack, LangChain,
   MCP, the ASGI server, the Stripe SDK): a lazy import that rots back into an eager one fails here.

Real parts: the Stripe sandbox (to cache the customer), the shared Redis under this test's key prefix
(unlinked afterwards), the installed ``billing`` console script and the interpreter as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox.core import ACCOUNT_ID
from tests.bot.test_tenant_cache import cached_by_a_first_lookup
from tests.fakes.stripe_servers import HangingStripe
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle

BILLING = Path(sys.executable).with_name("billing")
OUR_VARIABLES = ("STRIPE_", "BILLING_", "REDIS_", "SLACK_")
ONLY_OTHER_COMMANDS = ("slack_bolt", "slack_sdk", "langchain_core", "langchain", "mcp", "uvicorn",
                       "starlette", "prometheus_client", "stripe", "yaml")
"""Top-level packages a cached lookup does not use: the Slack app, the LLM tools, the MCP server, the
ASGI server, metrics, the Stripe SDK (a hit never asks Stripe) and the rules."""


@pytest.fixture
async def prefix(redis_url: str, key_prefix: str) -> AsyncIterator[str]:
    yield key_prefix
    await unlink_prefix(redis_url, key_prefix)


def billing(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    return subprocess.run([str(BILLING), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize("account", ["remembered", "configured"])
def test_a_cached_lookup_never_asks_a_hanging_stripe(
    sandbox: SandboxHandle, redis_url: str, prefix: str, hanging_stripe: HangingStripe, account: str
) -> None:
    env = cached_by_a_first_lookup(sandbox, redis_url, prefix, account)

    # One attempt, short: were the hit path to ask Stripe, this test fails on what Stripe received,
    # quickly, rather than after the product's default 4 attempts × 10 s.
    hung = {**env, "STRIPE_API_BASE": hanging_stripe.url, "BILLING_STRIPE_RETRIES": "0",
            "BILLING_STRIPE_TIMEOUT": "2"}
    second = billing(["lookup", "jane@acme.com", "--json"], hung)
    assert second.returncode == 0, second.stderr
    body = json.loads(second.stdout)
    assert (body["source"], body["status"], body["stale"]) == ("cache", "past_due", False)
    assert second.stderr == ""
    assert (hanging_stripe.connections, bytes(hanging_stripe.received)) == (0, b"")


def test_a_cached_lookup_imports_nothing_only_other_commands_use(
    sandbox: SandboxHandle, redis_url: str, prefix: str
) -> None:
    env = {"STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url, "REDIS_URL": redis_url,
           "BILLING_KEY_PREFIX": prefix, "STRIPE_ACCOUNT_ID": ACCOUNT_ID}
    first = billing(["lookup", "jane@acme.com", "--json"], env)
    assert first.returncode == 0, first.stderr

    # The console script's own entry point, run whole; at exit, the top-level packages it loaded.
    script = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}))))\n"
        "sys.argv = ['billing', 'lookup', 'jane@acme.com', '--json']\n"
        "from bot.cli import main\n"
        "main()\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    done = subprocess.run([sys.executable, "-c", script], env={**base, **env}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    card, loaded_line = done.stdout.rstrip("\n").rsplit("\n", 1)
    assert json.loads(card)["source"] == "cache"
    loaded = set(json.loads(loaded_line))
    assert "redis" in loaded and "typer" in loaded  # the figure is of the command that ran
    assert sorted(loaded.intersection(ONLY_OTHER_COMMANDS)) == []


def test_a_reader_closing_the_pipe_early_is_not_an_error() -> None:
    # `billing audit | head`: once head has its lines, the rest is unwanted, not a failure
    # ("Broken pipe (BrokenPipeError)." and exit 3 before). The pipe is closed before the child
    # has even started, so its first write meets a closed pipe.
    base = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    child = subprocess.Popen([str(BILLING), "rules", "validate"], env=base, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=300) == 0
    assert stderr == ""
