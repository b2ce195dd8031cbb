"""Helpers every ``billing`` command shares: run a coroutine, and turn failures into one sentence.

Exit codes (ARCHITECTURE.md): 0 found/ok, 1 not found, 2 bad input or configuration, 3 Stripe or
Redis unavailable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import typer
from redis.exceptions import RedisClusterException, RedisError

from billing.config import parse_log_level
from billing.errors import BillingError

if TYPE_CHECKING:  # imported by the commands that use them: a cached lookup never loads either
    import stripe

T = TypeVar("T")
P = ParamSpec("P")

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


NOTICE_LOGGERS = ("billing.runtime",)
"""Loggers whose warnings a one-shot command still prints (as the bare sentence): e.g. that the cache
is unreachable and the lookup goes to Stripe directly. Silence there would hide a misconfiguration."""


def configure_logging(default: int) -> None:
    """Log to stderr at ``BILLING_LOG_LEVEL`` (DEBUG, INFO, WARNING, ERROR, CRITICAL), else at ``default``.

    One-shot commands default to ERROR so an expected failure stays one sentence (no retry chatter),
    except the runtime's warnings, printed as one bare line each; long-running ones (serve, worker)
    default to INFO. A bad ``BILLING_LOG_LEVEL`` is one sentence and exit 2, before any command runs.
    """
    try:
        level = parse_log_level(os.environ.get("BILLING_LOG_LEVEL"))
    except ValueError as err:
        typer.echo(f"{err}.", err=True)
        raise SystemExit(EXIT_BAD_INPUT) from None
    logging.basicConfig(level=level or default, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        force=True)
    if level is not None:
        return
    # The SDKs log every HTTP request at INFO: our own lines say what matters.
    for chatty in ("stripe", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if default > logging.WARNING:
        notice = logging.StreamHandler()
        notice.setFormatter(logging.Formatter("%(message)s"))
        for name in NOTICE_LOGGERS:
            logger = logging.getLogger(name)
            logger.handlers = [notice]
            logger.setLevel(logging.WARNING)
            logger.propagate = False


def run_cli(app: typer.Typer) -> NoReturn:
    """Run the CLI; a usage error (unknown option, value out of range) is one sentence, exit 2.

    Typer's own rendering is a usage line, a hint and a boxed error: several lines on stderr.
    """
    try:
        code = app(standalone_mode=False)
    except Exception as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # the help is already printed
            raise SystemExit(EXIT_BAD_INPUT) from None
        message, exit_code = getattr(err, "format_message", None), getattr(err, "exit_code", None)
        if not callable(message) or not isinstance(exit_code, int):
            raise  # not a usage error: a bug, shown as one
        command = getattr(getattr(err, "ctx", None), "command_path", None) or "billing"
        typer.echo(f"{str(message()).rstrip('.')} (see {command} --help).", err=True)
        raise SystemExit(exit_code) from None
    raise SystemExit(code if isinstance(code, int) else EXIT_OK)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine to completion on a fresh event loop (one per CLI command)."""
    return asyncio.run(coro)


def fail(message: str, code: int) -> NoReturn:
    """Print one sentence on stderr and leave with ``code``."""
    typer.echo(message, err=True)
    raise typer.Exit(code)


def describe_stripe_error(err: stripe.StripeError) -> tuple[str, int]:
    """A sentence and exit code for a Stripe error the gateway did not already translate.

    Stripe's own message is never shown for 401/403: it quotes part of the key.
    """
    import stripe  # already loaded: ``err`` is one of its errors

    if isinstance(err, stripe.AuthenticationError):
        return "Stripe refused the API key (401): check STRIPE_API_KEY.", EXIT_BAD_INPUT
    if isinstance(err, stripe.PermissionError):
        return (
            "The Stripe key lacks a read permission Billing Lens needs (403); "
            "give it read access to customers, subscriptions, invoices, charges, prices, products, "
            "coupons, events, disputes and credit notes.",
            EXIT_BAD_INPUT,
        )
    if isinstance(err, stripe.APIConnectionError):
        return "Could not reach Stripe; check the network or STRIPE_API_BASE.", EXIT_UNAVAILABLE
    if isinstance(err, stripe.RateLimitError):
        return "Stripe is rate-limiting this account (429); try again shortly.", EXIT_UNAVAILABLE
    status = f"HTTP {err.http_status}" if err.http_status else type(err).__name__
    return f"Stripe answered with an unexpected error ({status}); try again shortly.", EXIT_UNAVAILABLE


def _is_error_of(err: BaseException, module: str, name: str) -> bool:
    """Whether ``err`` is a ``module.name``, when that module has been imported at all."""
    kind = getattr(sys.modules.get(module), name, None)
    return isinstance(kind, type) and isinstance(err, kind)


def handles_errors(command: Callable[P, T]) -> Callable[P, T]:
    """Wrap a Typer command so an expected failure is one sentence on stderr and the right exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except BillingError as err:
            fail(str(err), err.exit_code)
        except (RedisError, RedisClusterException) as err:
            fail(f"Redis is unavailable ({type(err).__name__}); check REDIS_URL.", EXIT_UNAVAILABLE)
        except BrokenPipeError:
            # Whoever read stdout stopped (`billing audit | head`): the rest is unwanted, not a
            # failure. stdout goes to /dev/null so the interpreter's last flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_OK) from None
        except OSError as err:  # e.g. a port already in use
            fail(f"{err.strerror or type(err).__name__} ({type(err).__name__}).", EXIT_UNAVAILABLE)
        except KeyboardInterrupt:
            fail("Interrupted.", 130)
        except Exception as err:
            # Rules and Stripe errors, matched without importing either package (a module that was
            # never imported raised nothing): their imports cost a cached lookup most of its start-up.
            if _is_error_of(err, "rules.loader", "RulesError"):
                fail(str(err), EXIT_BAD_INPUT)
            if _is_error_of(err, "stripe", "StripeError"):
                fail(*describe_stripe_error(err))  # type: ignore[arg-type]
            raise

    return wrapper
