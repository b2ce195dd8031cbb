"""``BillingTool``: one billing tool as a LangChain ``BaseTool`` with sync and async entry points.

No ``from __future__ import annotations`` here, on purpose: LangChain resolves the type hints of
``_run``/``_arun`` on every call (looking for a ``RunnableConfig`` parameter). String annotations are
re-evaluated each time, and a precise return type is costly to resolve; with plain ``Any`` hints it
costs about 10 µs instead of 50-140 µs. The precise types live on the ``call`` this tool wraps.
``StructuredTool.from_function`` is not used for the same reason: it resolves its function's hints
on every call too.
"""

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field, PrivateAttr

from tools.bridge import LoopBridge
from tools.content import bad_email_content, unavailable_content
from tools.descriptions import EMAIL_ARGUMENT

ToolResult = tuple[str, dict[str, Any] | None]
"""(content for the model, artifact for code: the BillingContext JSON, None when there is none)."""

ToolCall = Callable[[str], Coroutine[Any, Any, ToolResult]]


class EmailArgs(BaseModel):
    """The one argument of both tools."""

    email: str = Field(description=EMAIL_ARGUMENT)


def _invalid_arguments(error: Exception) -> str:
    del error  # the rejected value is the caller's text: not echoed
    return bad_email_content()


def _email_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """LangChain passes the validated ``EmailArgs`` fields as keywords."""
    value = kwargs.get("email", args[0] if args else "")
    return value if isinstance(value, str) else ""


class BillingTool(BaseTool):
    """Runs ``call(email)`` on the runtime's event loop: awaited by ``_arun``, waited for by ``_run``
    (see ``tools.bridge``). Content and artifact come back as LangChain's ``content_and_artifact``."""

    _call: ToolCall = PrivateAttr()
    _bridge: LoopBridge = PrivateAttr()

    def __init__(self, *, call: ToolCall, bridge: LoopBridge, name: str, description: str) -> None:
        super().__init__(name=name, description=description, args_schema=EmailArgs,
                         response_format="content_and_artifact", handle_validation_error=_invalid_arguments)
        self._call = call
        self._bridge = bridge

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        email = _email_argument(args, kwargs)
        try:
            return self._bridge.run_sync(lambda: self._call(email))
        except TimeoutError:
            return unavailable_content(), None

    async def _arun(self, *args: Any, **kwargs: Any) -> Any:
        email = _email_argument(args, kwargs)
        return await self._bridge.run_async(lambda: self._call(email))


# LangChain inspects ``_run``/``_arun`` on every call (for a ``run_manager`` parameter); a signature
# computed once and declared on the function is what ``inspect.signature`` then returns, instead of
# building it again from the code object each call (about a sixth of LangChain's per-call work).
for _method in (BillingTool._run, BillingTool._arun):
    _method.__signature__ = inspect.signature(_method)  # type: ignore[union-attr]
