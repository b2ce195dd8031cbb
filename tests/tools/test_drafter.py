"""The reply drafter with the scripted tool-calling model, against the sandbox and the real Redis; and
``billing draft`` as a subprocess (the installed console script)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from bot.runtime import Runtime
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle
from tests.tools.conftest import BILLING, product_env, request_log
from tools.context_tools import BillingToolkit
from tools.drafter import SYSTEM_PROMPT, draft_reply, draft_reply_sync
from tools.scripted_model import ScriptedBillingModel, demo_model

QUESTION = "Hi, why was I charged? My card keeps failing."


def customer_lookups(sandbox: SandboxHandle, email: str) -> list[dict[str, Any]]:
    return [r for r in request_log(sandbox)
            if r["path"] == "/v1/customers" and r["query"].get("email") == email]


async def test_the_model_calls_get_stripe_context_and_answers_from_its_result(
    toolkit: BillingToolkit, sandbox: SandboxHandle,
) -> None:
    model = demo_model()
    sandbox.control.clear_requests()
    result = await draft_reply(QUESTION, "jane@acme.com", model, toolkit=toolkit)

    assert result.finished and result.steps == 2
    [tool_call] = result.tool_calls
    assert (tool_call.name, tool_call.args) == ("get_stripe_context", {"email": "jane@acme.com"})
    # The tool ran against the sandbox, over HTTP.
    assert customer_lookups(sandbox, "jane@acme.com")
    assert tool_call.artifact["status"] == "past_due"
    # The tool result reached the model: its second call saw the ToolMessage.
    first, second = model.seen
    assert not any(isinstance(m, ToolMessage) for m in first)
    assert SYSTEM_PROMPT in str(first[0].content) and "jane@acme.com" in str(first[0].content)
    [seen] = [m for m in second if isinstance(m, ToolMessage)]
    assert seen.tool_call_id == tool_call.id and seen.name == "get_stripe_context"
    assert "past_due" in str(seen.content) and '"amount_due":"29.00 USD"' in str(seen.content)
    # The draft cites the plan, the status and the amount due, from the tool result.
    for fact in ("Pro Monthly", "past_due", "29.00 USD"):
        assert fact in result.draft
    assert isinstance(result.messages[-1], AIMessage) and result.messages[-1].text == result.draft


async def test_when_stripe_is_down_the_draft_states_no_amounts(
    toolkit: BillingToolkit, sandbox: SandboxHandle,
) -> None:
    sandbox.control.set_faults(error_probability=1.0, error_status=500)
    try:
        result = await draft_reply(QUESTION, "bigco@example.com", demo_model(), toolkit=toolkit)
    finally:
        sandbox.control.clear_faults()
    assert "temporarily unavailable" in result.tool_calls[0].content
    assert "USD" not in result.draft and "won't quote any amounts" in result.draft


class _KeepsCalling(ScriptedBillingModel):
    """Asks for a tool on every turn (and once for a tool that does not exist)."""

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        name = "refund_everything" if len(self.seen) == 1 else "evaluate_routing_rules"
        call = {"name": name, "args": {"email": "jane@acme.com"}, "id": f"call_{len(self.seen)}"}
        return ChatResult(generations=[ChatGeneration(message=AIMessage("", tool_calls=[call]))])


async def test_the_loop_is_bounded_and_an_unknown_tool_is_an_error_message(toolkit: BillingToolkit) -> None:
    model = _KeepsCalling()
    result = await draft_reply(QUESTION, "jane@acme.com", model, toolkit=toolkit, max_steps=3)
    assert not result.finished and result.steps == 3 and len(model.seen) == 3
    unknown, *routed = result.tool_calls
    assert unknown.name == "refund_everything" and unknown.content.startswith("unknown tool")
    assert [c.name for c in routed] == ["evaluate_routing_rules"] * 2
    assert json.loads(routed[0].content)["routing"]["priority"] == "urgent"


async def test_the_sync_wrapper_from_a_thread(toolkit: BillingToolkit) -> None:
    result = await asyncio.to_thread(draft_reply_sync, QUESTION, "trial@startup.io", demo_model(),
                                     toolkit=toolkit)
    assert "trialing" in result.draft and result.tool_calls[0].artifact["status"] == "trialing"


async def test_the_drafter_is_audited_under_its_own_name(runtime: Runtime) -> None:
    toolkit = BillingToolkit(runtime, user="drafter")
    await draft_reply(QUESTION, "jane@acme.com", demo_model(), toolkit=toolkit)
    assert runtime.default.audit is not None
    [entry] = await runtime.default.audit.read(user="drafter", limit=5)
    assert (entry.surface, entry.query, entry.outcome) == ("tool", "jane@acme.com", "found")


# -- `billing draft` -------------------------------------------------------------------------------------


def billing(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BILLING), *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def one_sentence(result: subprocess.CompletedProcess[str]) -> str:
    message = result.stderr.strip()
    assert message and "\n" not in message and "Traceback" not in message, result.stderr
    return message


def test_billing_draft_prints_a_draft_naming_plan_status_and_amount_due(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str,
) -> None:
    env = product_env(sandbox, redis_url, key_prefix)
    try:
        result = billing(env, "draft", "jane@acme.com", "--message", "why was I charged?",
                         "--model", "tools.scripted_model:demo_model")
        assert result.returncode == 0, result.stderr
        for fact in ("Pro Monthly", "past_due", "29.00 USD"):
            assert fact in result.stdout
        assert customer_lookups(sandbox, "jane@acme.com")

        as_json = billing({**env, "BILLING_DRAFT_MODEL": "tools.scripted_model:demo_model"},
                          "draft", "jane@acme.com", "-m", "why was I charged?", "--json")
        assert as_json.returncode == 0, as_json.stderr
        body = json.loads(as_json.stdout)
        assert body["finished"] is True and body["tool_calls"][0]["name"] == "get_stripe_context"
        assert json.loads(body["tool_calls"][0]["content"])["status"] == "past_due"
    finally:
        asyncio.run(unlink_prefix(redis_url, key_prefix))


def test_billing_draft_refuses_a_bad_model_factory_in_one_sentence(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str,
) -> None:
    env = product_env(sandbox, redis_url, key_prefix)
    cases = {
        "": "A chat model is needed",
        "tools.scripted_model": "must be module:factory",
        "no_such_module_xyz:make": "Could not import 'no_such_module_xyz'",
        "tools.scripted_model:no_such_factory": "has no callable 'no_such_factory'",
        "json:dumps": "The model factory json:dumps failed (TypeError",
        "tools.scripted_model:_find_email": "failed",
        "builtins:object": "not a chat model with bind_tools",
    }
    sandbox.control.clear_requests()
    for spec, expected in cases.items():
        args = ["draft", "jane@acme.com", "-m", "hi", *(["--model", spec] if spec else [])]
        result = billing(env, *args)
        assert result.returncode == 2, (spec, result.stderr)
        assert expected in one_sentence(result), spec
    bad_email = billing(env, "draft", "not an email", "-m", "hi", "--model", "tools.scripted_model:x")
    assert bad_email.returncode == 2 and "not an email address" in one_sentence(bad_email)
    assert request_log(sandbox) == []  # nothing reached Stripe


def test_the_cli_default_step_bound_is_the_drafters() -> None:
    from bot import cli_tools
    from tools import drafter

    assert cli_tools.DEFAULT_MAX_STEPS == drafter.DEFAULT_MAX_STEPS
