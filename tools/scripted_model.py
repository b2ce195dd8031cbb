"""A scripted tool-calling chat model: no provider, no network, deterministic.

``ScriptedBillingModel`` behaves like a well-mannered model for the demo and the tests: first it asks
``get_stripe_context`` for the email found in the conversation (the helpdesk hint in the system prompt,
else the customer's messages); once a tool result is back it writes a short reply that cites the plan,
the status and any amount due from that result, and nothing else. Every list of messages it is called
with is kept in ``seen``, so a test can check what reached the model.

Use it from the CLI as ``billing draft EMAIL --message TEXT --model tools.scripted_model:demo_model``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

from tools.descriptions import GET_STRIPE_CONTEXT

_EMAIL = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")


def _find_email(messages: Sequence[BaseMessage]) -> str | None:
    hinted = [m for m in messages if isinstance(m, SystemMessage)]
    others = [m for m in messages if not isinstance(m, SystemMessage | ToolMessage | AIMessage)]
    for message in [*hinted, *others]:
        found = _EMAIL.findall(str(message.text))
        if found:
            return str(found[-1])
    return None


def _tool_names(tools: Sequence[dict[str, Any]] | None) -> set[str]:
    return {str(t.get("function", {}).get("name")) for t in tools or []}


def _reply_from(content: str) -> str:
    """A reply that cites only what the tool said."""
    try:
        data: dict[str, Any] = json.loads(content)
    except ValueError:
        return "I couldn't read your billing details just now; I'll check and get back to you."
    if not data.get("ok"):
        if data.get("error") == "not_found":
            return ("I couldn't find a billing account under this email address. Could you tell me the "
                    "email you signed up with?")
        return ("I couldn't retrieve your billing details right now, so I won't quote any amounts; "
                "I'll check and follow up shortly.")
    plan = (data.get("untrusted_customer_data") or {}).get("plan") or "your plan"
    status = data.get("status") or "no active subscription"
    payment = data.get("payment") or {}
    parts = [f"I checked your account: you're on {plan} and your subscription status is {status}."]
    if payment.get("amount_due"):
        retry = f", and the next automatic retry is on {payment['next_retry'][:10]}" \
            if payment.get("next_retry") else ""
        parts.append(f"The latest invoice of {payment['amount_due']} has not been paid yet "
                     f"({payment.get('attempt_count', 0)} payment attempts so far{retry}). "
                     "Updating your payment method will settle it.")
    elif data.get("mrr") and data["mrr"] != "none":
        parts.append(f"Your recurring charge is {data['mrr']} per month.")
    if data.get("stale"):
        parts.append("These details may be slightly out of date.")
    parts.append("If you are asking for a refund or credit, our team will review that request.")
    return "Hi, thanks for reaching out. " + " ".join(parts)


class ScriptedBillingModel(BaseChatModel):
    """Calls ``get_stripe_context`` once, then answers from its result (see the module docstring)."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-billing"

    def bind_tools(
        self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool], *,
        tool_choice: str | None = None, **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        del tool_choice
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        self.seen.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self._next(messages, kwargs.get("tools")))])

    def _next(self, messages: list[BaseMessage], tools: Sequence[dict[str, Any]] | None) -> AIMessage:
        results = [m for m in messages if isinstance(m, ToolMessage) and m.name == GET_STRIPE_CONTEXT]
        if results:
            return AIMessage(_reply_from(str(results[-1].content)))
        email = _find_email(messages)
        if email is None or GET_STRIPE_CONTEXT not in _tool_names(tools):
            return AIMessage("Thanks for reaching out. Could you tell me the email address on your account "
                             "so I can look at your billing?")
        call_id = f"call_{len(self.seen)}"
        call = {"name": GET_STRIPE_CONTEXT, "args": {"email": email}, "id": call_id}
        return AIMessage("", tool_calls=[call])


def demo_model() -> ScriptedBillingModel:
    """The factory ``--model tools.scripted_model:demo_model`` names."""
    return ScriptedBillingModel()
