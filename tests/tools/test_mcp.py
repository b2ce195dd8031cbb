"""``billing mcp`` over stdio, driven by the ``mcp`` package's own client: the console script runs as a
subprocess against the sandbox and the real Redis, and must answer like the LangChain tools."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult, TextContent

from bot.runtime import Runtime
from tests.fixtures_sandbox import SandboxHandle
from tests.tools.conftest import BILLING, product_env, request_log
from tools.context_tools import BillingToolkit
from tools.descriptions import EMAIL_ARGUMENT, ROUTING_DESCRIPTION, STRIPE_CONTEXT_DESCRIPTION


@asynccontextmanager
async def mcp_session(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str,
) -> AsyncIterator[ClientSession]:
    """A client session with ``billing mcp``. Entered inside each test, not in a fixture: the SDK's
    task groups must be left by the task that entered them."""
    params = StdioServerParameters(command=str(BILLING), args=["mcp"],
                                   env=product_env(sandbox, redis_url, key_prefix))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
        await client.initialize()
        yield client


def text_of(result: CallToolResult) -> str:
    assert not result.is_error
    [block] = result.content
    assert isinstance(block, TextContent)
    return block.text


def without_age(content: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(content)
    doc.pop("age_seconds", None)  # seconds pass between two reads of the same cached context
    return doc


async def test_lists_both_tools_with_their_argument_schema(
    runtime: Runtime, sandbox: SandboxHandle, redis_url: str, key_prefix: str,
) -> None:
    del runtime  # only for its key prefix clean-up (the server remembers its account there)
    async with mcp_session(sandbox, redis_url, key_prefix) as session:
        listed = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert sorted(listed) == ["evaluate_routing_rules", "get_stripe_context"]
    assert listed["get_stripe_context"].description == STRIPE_CONTEXT_DESCRIPTION
    assert listed["evaluate_routing_rules"].description == ROUTING_DESCRIPTION
    for tool in listed.values():
        schema = tool.input_schema
        assert schema["type"] == "object" and schema["required"] == ["email"]
        assert schema["properties"] == {"email": {"description": EMAIL_ARGUMENT, "title": "Email",
                                                  "type": "string"}}
        assert tool.annotations is not None and tool.annotations.read_only_hint is True


async def test_get_stripe_context_gives_the_same_content_as_the_langchain_tool(
    runtime: Runtime, sandbox: SandboxHandle, redis_url: str, key_prefix: str,
) -> None:
    # The server shares the runtime fixture's key prefix (unlinked afterwards): both read one cache.
    async with mcp_session(sandbox, redis_url, key_prefix) as session:
        await _same_content(session, runtime, sandbox)


async def _same_content(session: ClientSession, runtime: Runtime, sandbox: SandboxHandle) -> None:
    sandbox.control.clear_requests()
    first = text_of(await session.call_tool("get_stripe_context", {"email": "jane@acme.com"}))
    assert json.loads(first)["source"] == "stripe"
    assert any(r["path"] == "/v1/customers" and r["query"].get("email") == "jane@acme.com"
               for r in request_log(sandbox))
    over_mcp = text_of(await session.call_tool("get_stripe_context", {"email": "jane@acme.com"}))

    tools = {tool.name: tool for tool in BillingToolkit(runtime).get_tools()}
    in_process = await tools["get_stripe_context"].ainvoke({"email": "jane@acme.com"})
    assert without_age(over_mcp) == without_age(in_process)  # both read the context the first call cached
    doc = json.loads(over_mcp)
    assert doc["status"] == "past_due" and doc["payment"]["amount_due"] == "29.00 USD"
    assert doc["untrusted_customer_data"]["plan"] == "Pro Monthly"

    routing_mcp = text_of(await session.call_tool("evaluate_routing_rules", {"email": "jane@acme.com"}))
    routing_here = await tools["evaluate_routing_rules"].ainvoke({"email": "jane@acme.com"})
    assert without_age(routing_mcp) == without_age(routing_here)


async def test_failures_are_content_and_the_server_keeps_serving(
    runtime: Runtime, sandbox: SandboxHandle, redis_url: str, key_prefix: str,
) -> None:
    del runtime  # only for its key prefix clean-up
    async with mcp_session(sandbox, redis_url, key_prefix) as session:
        await _failures(session, sandbox)


async def _failures(session: ClientSession, sandbox: SandboxHandle) -> None:
    bad = json.loads(text_of(await session.call_tool("get_stripe_context", {"email": "not an email"})))
    assert bad["error"] == "bad_email"
    missing = json.loads(text_of(await session.call_tool("get_stripe_context", {"email": "no@one.example"})))
    assert missing["message"] == "no Stripe customer found for no@one.example"
    sandbox.control.set_faults(error_probability=1.0, error_status=500)
    try:
        down = json.loads(text_of(await session.call_tool("evaluate_routing_rules",
                                                          {"email": "bigco@example.com"})))
    finally:
        sandbox.control.clear_faults()
    assert down["message"] == "billing data temporarily unavailable; do not guess amounts"
    # A call without the argument is refused by the SDK's schema check, as an error result, not a crash.
    refused = await session.call_tool("get_stripe_context", {})
    assert refused.is_error
    again = json.loads(text_of(await session.call_tool("get_stripe_context", {"email": "bigco@example.com"})))
    assert again["mrr"] == "1,250.00 USD"
