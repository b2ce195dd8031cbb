"""`billing` CLI commands for the LLM tools: `mcp` (the tools over MCP, stdio) and `draft` (a reply draft).

No model provider is wired in: `draft` builds its chat model with a factory the operator names as
`module:factory` (`--model`, else `BILLING_DRAFT_MODEL`), e.g. `tools.scripted_model:demo_model`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from billing.config import Settings
from billing.domain.matching import parse_query
from bot.cli_support import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, fail, handles_errors, run_async
from bot.runtime import load_settings, open_runtime

if TYPE_CHECKING:
    from tools.drafter import DraftResult, ToolCallingModel

# LangChain and the MCP SDK take a second or two to import: they are loaded by these two commands only,
# so every other `billing` command starts without them.

log = logging.getLogger(__name__)

MODEL_ENV = "BILLING_DRAFT_MODEL"
MODEL_EXAMPLE = "tools.scripted_model:demo_model"
DEFAULT_MAX_STEPS = 4  # tools.drafter.DEFAULT_MAX_STEPS, literal here to keep LangChain out of start-up


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_model(spec: str) -> ToolCallingModel:
    """Import ``module:factory`` and call it; every way this fails is one sentence and exit 2."""
    module_name, _, factory_name = spec.strip().partition(":")
    if not module_name or not factory_name:
        fail(f"--model must be module:factory, e.g. {MODEL_EXAMPLE} (got {spec!r}).", EXIT_BAD_INPUT)
    # The operator's own module may sit in the working directory; installed packages still win.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        fail(f"Could not import {module_name!r} named by --model ({_first_line(err)}).", EXIT_BAD_INPUT)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        fail(f"Module {module_name!r} has no callable {factory_name!r} (named by --model).", EXIT_BAD_INPUT)
    try:
        model = factory()
    except Exception as err:
        fail(f"The model factory {spec} failed ({_first_line(err)}).", EXIT_BAD_INPUT)
    if not callable(getattr(model, "bind_tools", None)):
        fail(f"The model factory {spec} returned {type(model).__name__}, not a chat model with bind_tools.",
             EXIT_BAD_INPUT)
    chat_model: ToolCallingModel = model
    return chat_model


class ModelFailedError(Exception):
    """The chat model (or a tool it called) raised while drafting: a provider error, not ours."""


async def _draft(settings: Settings, email: str, message: str, model: ToolCallingModel,
                 max_steps: int) -> DraftResult:
    from tools.context_tools import BillingToolkit
    from tools.drafter import draft_reply

    async with open_runtime(settings) as runtime:
        toolkit = BillingToolkit(runtime, user="drafter")
        try:
            return await draft_reply(message, email, model, toolkit=toolkit, max_steps=max_steps)
        except Exception as err:  # the billing tools never raise: this came from the model
            raise ModelFailedError(_first_line(err)) from err


def _as_json(result: DraftResult) -> dict[str, Any]:
    return {
        "draft": result.draft, "finished": result.finished, "steps": result.steps,
        "tool_calls": [{"name": c.name, "args": c.args, "content": c.content, "artifact": c.artifact}
                       for c in result.tool_calls],
    }


@handles_errors
def draft(
    email: Annotated[str, typer.Argument(help="The customer's email address.")],
    message: Annotated[str, typer.Option("--message", "-m", help="The customer's message to answer.")],
    model: Annotated[str | None, typer.Option(
        "--model", show_default=False,
        help=f"Chat model factory as module:factory (default: ${MODEL_ENV}), e.g. {MODEL_EXAMPLE}.")] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, max=20,
                                           help="At most this many model calls.")] = DEFAULT_MAX_STEPS,
    as_json: Annotated[bool, typer.Option("--json", help="Print draft and tool calls as JSON.")] = False,
) -> None:
    """Draft a reply to a customer's billing question with a tool-calling chat model, for review."""
    # bad input is exit 2 before any model or network is touched (the settings name the metadata keys)
    parse_query(email, load_settings().metadata_keys)
    spec = model or os.environ.get(MODEL_ENV, "").strip()
    if not spec:
        fail(f"A chat model is needed: pass --model module:factory (e.g. {MODEL_EXAMPLE}) "
             f"or set {MODEL_ENV}.", EXIT_BAD_INPUT)
    chat_model = load_model(spec)
    settings = load_settings()
    try:
        result = run_async(_draft(settings, email, message, chat_model, max_steps))
    except ModelFailedError as err:
        log.debug("the chat model failed", exc_info=True)
        fail(f"The chat model failed ({err}); BILLING_LOG_LEVEL=DEBUG shows details.", EXIT_UNAVAILABLE)
    if as_json:
        typer.echo(json.dumps(_as_json(result), indent=2, ensure_ascii=False))
    else:
        typer.echo(result.draft)
    if not result.finished:
        fail(f"The model was still calling tools after {result.steps} steps; the draft is incomplete.",
             EXIT_UNAVAILABLE)


@handles_errors
def mcp() -> None:
    """Serve get_stripe_context and evaluate_routing_rules over MCP on stdin/stdout (for AI agents)."""
    from tools.mcp_server import serve_stdio

    settings = load_settings()
    run_async(serve_stdio(lambda: open_runtime(settings)))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root CLI."""
    app.command("mcp")(mcp)
    app.command("draft")(draft)
