"""``get_stripe_context`` and ``evaluate_routing_rules``: LangChain tools over the shared runtime.

``BillingTools`` is the behaviour (async, one audited lookup per call, every failure turned into
content); ``BillingToolkit`` wraps it as LangChain tools (``BillingTool``) with sync and async entry
points; the MCP server (``tools.mcp_server``) serves the same ``BillingTools``, so both surfaces give
the same content.

``tools/`` may import only ``billing`` and ``rules`` (ARCHITECTURE.md), so the runtime is described
here by the two things the tools use (``ToolRuntime``); ``bot.runtime.Runtime`` fits it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from langchain_core.tools import BaseTool, BaseToolkit
from pydantic import ConfigDict, PrivateAttr

from billing.cache.audit import Surface
from billing.cache.connections import REDIS_ERRORS
from billing.domain.models import BillingContext
from billing.errors import BadQueryError, BillingError
from rules import RuleEvaluation, RulesError, RulesFile, evaluate_rules
from tools.bridge import LoopBridge
from tools.content import (
    ContentPolicy,
    bad_email_content,
    message_content,
    not_found_content,
    routing_content,
    stripe_context_content,
    unavailable_content,
)
from tools.descriptions import (
    EVALUATE_ROUTING_RULES,
    GET_STRIPE_CONTEXT,
    ROUTING_DESCRIPTION,
    STRIPE_CONTEXT_DESCRIPTION,
)
from tools.langchain_tool import BillingTool, ToolResult

log = logging.getLogger(__name__)

SURFACE: Surface = "tool"
# Stripe or Redis unavailable (after the service's own fallbacks), or a key Stripe refused: the model
# is told the data is unavailable, the log says why.
_UNAVAILABLE: tuple[type[BaseException], ...] = (BillingError, *REDIS_ERRORS)


class AuditedLookup(Protocol):
    async def lookup(
        self, query: str, *, user: str, surface: Surface, refresh: bool = False, team: str | None = None,
    ) -> BillingContext: ...


class ToolRuntime(Protocol):
    """What the tools need from ``bot.runtime.Runtime``: the audited lookup and the rules in force."""

    @property
    def default(self) -> AuditedLookup: ...

    def rules(self) -> RulesFile: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BillingTools:
    """The two tools' behaviour: never raises for a lookup failure, always answers with content."""

    def __init__(
        self, runtime: ToolRuntime, *, user: str = "tool", policy: ContentPolicy | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.runtime = runtime
        self.user = user
        self.policy = policy or ContentPolicy()
        self._clock = clock

    async def stripe_context(self, email: str) -> ToolResult:
        """``get_stripe_context``: content and artifact; never raises (but for cancellation)."""
        return await self._guarded(self._stripe_context, email)

    async def routing(self, email: str) -> ToolResult:
        """``evaluate_routing_rules``: content and artifact; never raises (but for cancellation)."""
        return await self._guarded(self._routing, email)

    async def _guarded(self, run: Callable[[str], Awaitable[ToolResult]], email: str) -> ToolResult:
        try:
            return await run(email)
        except Exception:
            # The tool boundary: a model gets content it can act on, whatever broke below (a bug
            # included); the log keeps the traceback.
            log.exception("billing tool failed unexpectedly")
            return unavailable_content(), None

    async def _stripe_context(self, email: str) -> ToolResult:
        found = await self._lookup(email)
        if isinstance(found, str):
            return found, None
        evaluation = self._evaluate(found) if found.found else None
        content = stripe_context_content(found, evaluation, now=self._clock(), policy=self.policy)
        return content, found.to_json_dict()

    async def _routing(self, email: str) -> ToolResult:
        found = await self._lookup(email)
        if isinstance(found, str):
            return found, None
        if not found.found:
            return not_found_content(found.query), found.to_json_dict()
        evaluation = self._evaluate(found)
        if evaluation is None:
            content = message_content(
                "rules_unavailable", "the routing rules file could not be loaded; route this conversation "
                "by hand", advice="The billing facts are still available from get_stripe_context.")
            return content, found.to_json_dict()
        return routing_content(found, evaluation, now=self._clock(), policy=self.policy), found.to_json_dict()

    async def _lookup(self, email: str) -> BillingContext | str:
        """The context, or the content that explains why there is none.

        ``TenantRuntime.lookup`` validates the query with ``parse_query`` before any I/O (a malformed
        email never reaches Stripe) and audits every call, whatever its outcome.
        """
        try:
            return await self.runtime.default.lookup(email, user=self.user, surface=SURFACE)
        except BadQueryError:
            return bad_email_content()
        except _UNAVAILABLE as err:
            log.warning("billing tool lookup failed (%s): %s", type(err).__name__, err)
            return unavailable_content()

    def _evaluate(self, context: BillingContext) -> RuleEvaluation | None:
        try:
            rules = self.runtime.rules()
        except RulesError as err:
            log.error("routing rules unavailable: %s", err)
            return None
        return evaluate_rules(context, rules, self._clock())


class BillingToolkit(BaseToolkit):
    """Both billing tools over one runtime: ``BillingToolkit(runtime).get_tools()``.

    Build it on the event loop that opened the runtime (inside ``async with open_runtime(...)``): the
    sync entry points run there (see ``tools.bridge``). ``user`` names the caller in the audit trail.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    _core: BillingTools = PrivateAttr()
    _tools: list[BaseTool] = PrivateAttr()

    def __init__(
        self, runtime: ToolRuntime, *, user: str = "tool", policy: ContentPolicy | None = None,
        clock: Callable[[], datetime] = _utcnow, bridge: LoopBridge | None = None,
    ) -> None:
        super().__init__()
        self._core = BillingTools(runtime, user=user, policy=policy, clock=clock)
        loop_bridge = bridge if bridge is not None else LoopBridge.here()
        self._tools = [
            BillingTool(call=self._core.stripe_context, bridge=loop_bridge, name=GET_STRIPE_CONTEXT,
                        description=STRIPE_CONTEXT_DESCRIPTION),
            BillingTool(call=self._core.routing, bridge=loop_bridge, name=EVALUATE_ROUTING_RULES,
                        description=ROUTING_DESCRIPTION),
        ]

    @property
    def core(self) -> BillingTools:
        return self._core

    def get_tools(self) -> list[BaseTool]:
        return list(self._tools)
