"""Turning a lookup into the message a person sees, and answering inside Slack's 3 seconds.

Every outcome is a message: a card, "no customer found", a refusal, or one sentence about what went
wrong. Nothing here raises to bolt (a raised error would show the user a generic failure).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

from billing.cache.audit import Surface
from billing.domain.matching import bare_metadata_query
from billing.domain.models import BillingContext
from billing.errors import BadQueryError, StoreUnavailableError, StripeUnavailableError
from billing.service import STRIPE_NEEDED
from bot.runtime import TenantRuntime
from bot.slack import cards
from bot.slack.app import SlackDeps
from rules import RuleEvaluation, RulesError, evaluate_rules

log = logging.getLogger("billing.slack")

STRIPE_DOWN = "Stripe did not answer and nothing is cached for this customer; try again in a minute."
FAILED = "Something went wrong while looking that up; it was logged. Try again in a minute."
Respond = Callable[..., Awaitable[Any]]
Ack = Callable[..., Awaitable[Any]]


_TRIED_BY_ID = {
    "customer_id": ["Stripe customer id"],
    "subscription": ["cached subscriptions", "Stripe subscription id"],
    "invoice": ["cached invoices", "Stripe invoice id"],
    "invoice_number": ["cached invoice numbers", "Stripe invoice search"],
    "charge": ["cached charges", "Stripe charge id"],
    "payment_intent": ["cached charges", "Stripe payment intent id"],
    "metadata": ["cached customer metadata", "Stripe customer search by metadata"],
}


def _tried(deps: SlackDeps, query: str) -> list[str]:
    service = deps.runtime.service
    try:
        kind = service.parse(query).kind
    except BadQueryError:  # a not-found context's query was parsed once already; never expected
        kind = "email"
    tried = _TRIED_BY_ID.get(kind, ["manual links", "exact email", "lower-cased email", "Stripe search"])
    if kind != "metadata" and bare_metadata_query(query, service.metadata_keys) is not None:
        tried = [*tried, *_TRIED_BY_ID["metadata"]]  # the service tried it as the one metadata key too
    return tried


def evaluation_for(deps: SlackDeps, context: BillingContext, now: datetime) -> RuleEvaluation | None:
    try:
        return evaluate_rules(context, deps.runtime.rules(), now)
    except RulesError as err:  # a broken rules file must not hide the card
        log.error("rules not applied to the card: %s", err)
        return None


def card_message(
    deps: SlackDeps, context: BillingContext, *, shared_by: str | None = None
) -> cards.SlackMessage:
    """The card (or "not found") for a lookup's result; a stale card says so first."""
    now = deps.clock()
    if not context.found:
        return cards.not_found_message(context.query, _tried(deps, context.query))
    evaluation = evaluation_for(deps, context, now)
    if shared_by is not None:
        return cards.shared_card(context, evaluation, now=now, shared_by=shared_by)
    message = cards.customer_card(context, evaluation, now=now)
    if context.stale:
        age = cards.age_text(context.as_of, now) if context.as_of else "some time ago"
        note = f"Stripe did not answer; showing the card cached {age}."
        return cards.with_notice(message, note)
    return message


async def lookup_message(
    deps: SlackDeps, tenant: TenantRuntime, query: str, *, user: str, surface: Surface,
    team: str | None, refresh: bool = False,
) -> tuple[cards.SlackMessage, BillingContext | None]:
    """The message for one audited lookup, whatever happens."""
    try:
        context = await tenant.lookup(query, user=user, surface=surface, refresh=refresh, team=team)
    except BadQueryError as err:
        return cards.notice(str(err)), None
    except (StripeUnavailableError, StoreUnavailableError):
        return cards.notice(STRIPE_DOWN), None
    except Exception:
        log.exception("lookup failed")
        return cards.notice(FAILED), None
    return card_message(deps, context), context


async def answer_in_time(
    deps: SlackDeps,
    ack: Ack,
    respond: Respond,
    work: Coroutine[Any, Any, cards.SlackMessage],
    *,
    looking: cards.SlackMessage,
) -> None:
    """Ack with the answer when it is ready within the budget (a cached card), else ack with
    ``looking`` and send the answer through ``response_url`` when it comes. A lookup that has to ask
    Stripe says so (``STRIPE_NEEDED``): the ack is ``looking`` at once, not after the budget."""
    needs_stripe = asyncio.Event()
    token = STRIPE_NEEDED.set(needs_stripe)
    try:
        task = asyncio.ensure_future(work)  # the task copies the context, and with it the event
    finally:
        STRIPE_NEEDED.reset(token)
    waiter = asyncio.ensure_future(needs_stripe.wait())
    await asyncio.wait({task, waiter}, timeout=deps.ack_budget, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        await ack(response_type="ephemeral", **task.result().to_payload())
        return
    await ack(response_type="ephemeral", **looking.to_payload())

    async def follow() -> None:
        message = await task
        await respond(response_type="ephemeral", replace_original=True, **message.to_payload())

    deps.spawn(follow(), "slack-followup")


async def ack_with(ack: Ack, message: cards.SlackMessage) -> None:
    """Acknowledge with a private message."""
    await ack(response_type="ephemeral", **message.to_payload())


async def tell(respond: Respond, text: str) -> None:
    """One private sentence through ``response_url``, leaving the card above it in place."""
    await respond(response_type="ephemeral", replace_original=False, **cards.notice(text).to_payload())
