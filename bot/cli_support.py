"""Helpers every ``billing`` command shares: run a coroutine, and turn failures into one sentence.

Exit codes (ARCHITECTURE.md): 0 found/ok, 1 not found, 2 bad input or configuration, 3 Stripe or
Redis unavailable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, ParamSpec, TypeVar

import stripe
import typer
from redis.exceptions import RedisClusterException, RedisError

from billing.errors import BillingError
from rules import RulesError

T = TypeVar("T")
P = ParamSpec("P")

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3


def configure_logging(default: int) -> None:
    """Log to stderr at ``BILLING_LOG_LEVEL`` (e.g. DEBUG, INFO), else at ``default``.

    One-shot commands default to ERROR so an expected failure stays one sentence (no retry chatter);
    long-running ones (serve, worker) default to INFO.
    """
    level = os.environ.get("BILLING_LOG_LEVEL", "").strip().upper()
    chosen = level if level in logging.getLevelNamesMapping() else default
    logging.basicConfig(level=chosen, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    if not level:
        # The SDKs log every HTTP request at INFO: our own lines say what matters.
        for chatty in ("stripe", "httpx"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


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


def handles_errors(command: Callable[P, T]) -> Callable[P, T]:
    """Wrap a Typer command so an expected failure is one sentence on stderr and the right exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except BillingError as err:
            fail(str(err), err.exit_code)
        except RulesError as err:
            fail(str(err), EXIT_BAD_INPUT)
        except stripe.StripeError as err:
            fail(*describe_stripe_error(err))
        except (RedisError, RedisClusterException) as err:
            fail(f"Redis is unavailable ({type(err).__name__}); check REDIS_URL.", EXIT_UNAVAILABLE)
        except OSError as err:  # e.g. a port already in use
            fail(f"{err.strerror or type(err).__name__} ({type(err).__name__}).", EXIT_UNAVAILABLE)
        except KeyboardInterrupt:
            fail("Interrupted.", 130)

    return wrapper
