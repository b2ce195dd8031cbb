"""``/billing``: a private customer card, and the help, status, link, unlink and resync subcommands."""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext

from billing.cache.connections import REDIS_ERRORS
from billing.domain.matching import parse_query, without_secrets
from billing.errors import BadQueryError, StripeUnavailableError
from billing.sync.backfill import Backfill
from bot.runtime import TenantRuntime
from bot.slack import cards
from bot.slack.access import Decision
from bot.slack.answers import Ack, Respond, ack_with, answer_in_time, lookup_message, tell
from bot.slack.app import SlackDeps

log = logging.getLogger("billing.slack")

_CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9]{1,64}")
SUBCOMMANDS = frozenset({"help", "status", "link", "unlink", "resync"})
NO_CACHE = "The cache (Redis) is not available, so {what} cannot run now; try again when it is back."


def installed_team(context: AsyncBoltContext) -> str | None:
    """The workspace the app is installed in (from ``auth.test``), not the one a payload claims."""
    result = context.authorize_result
    return result.team_id if result is not None else context.team_id


async def handle_billing(
    deps: SlackDeps, ack: Ack, respond: Respond, command: dict[str, Any], context: AsyncBoltContext,
) -> None:
    """Entry point of ``/billing TEXT``: acknowledged within Slack's 3 s whatever Stripe does."""
    text = str(command.get("text") or "").strip()
    user = str(command.get("user_id") or "")
    team = installed_team(context)
    word, _, rest = text.partition(" ")
    sub = word.lower()
    if sub == "help" or not text:
        await ack_with(ack, cards.help_message())
        return
    admin = sub in {"link", "unlink", "resync"}
    decision = await deps.policy.check(user, team_id=team, channel_id=command.get("channel_id"), admin=admin)
    if not decision.allowed:
        await _refuse(deps, ack, decision, user=user, query=text, team=team)
        return
    tenant = deps.tenant(team)
    if sub == "status":
        await ack_with(ack, (await _status(deps, tenant)))
    elif sub == "link":
        checking = cards.notice("Checking that customer in Stripe…")
        await answer_in_time(deps, ack, respond, _link(tenant, rest, user=user, team=team), looking=checking)
    elif sub == "unlink":
        await ack_with(ack, (await _unlink(tenant, rest, user=user, team=team)))
    elif sub == "resync":
        await _resync(deps, ack, respond, tenant, user=user)
    else:
        looking = cards.looking_message(without_secrets(text))  # a client secret is read as its id only
        work = _card_text(deps, tenant, text, user=user, team=team)
        await answer_in_time(deps, ack, respond, work, looking=looking)


async def _card_text(deps: SlackDeps, tenant: TenantRuntime, query: str, *, user: str,
                     team: str | None) -> cards.SlackMessage:
    message, _ = await lookup_message(deps, tenant, query, user=user, surface="slack_command", team=team)
    return message


async def _refuse(deps: SlackDeps, ack: Ack, decision: Decision, *, user: str, query: str,
                  team: str | None) -> None:
    await ack_with(ack, cards.notice(decision.reason))
    await deps.tenant(team).record(user=user, surface="slack_command", query=query, outcome="refused",
                                   team=team)


async def _status(deps: SlackDeps, tenant: TenantRuntime) -> cards.SlackMessage:
    if tenant.store is None:
        return cards.notice(NO_CACHE.format(what="sync health"))
    try:
        health = await tenant.store.health()
    except REDIS_ERRORS:
        return cards.notice(NO_CACHE.format(what="sync health"))
    return cards.status_message(health.to_dict(), now=deps.clock())


def _email_of(text: str) -> str:
    query = parse_query(text)
    if query.kind != "email":
        raise BadQueryError(f"{text[:60]!r} is not an email address; give the customer's email.")
    return query.value.lower()


async def _link(tenant: TenantRuntime, args: str, *, user: str, team: str | None) -> cards.SlackMessage:
    parts = args.split()
    if len(parts) != 2 or not _CUSTOMER_ID.fullmatch(parts[1]):
        return cards.notice("Use `/billing link EMAIL cus_…`: an email, then the customer it should show.")
    try:
        email = _email_of(parts[0])
    except BadQueryError as err:
        return cards.notice(str(err))
    if tenant.store is None:
        return cards.notice(NO_CACHE.format(what="link"))
    customer_id = parts[1]
    try:
        exists = await tenant.service.gateway.retrieve_customer(
            customer_id, refuse_other_mode=True
        ) is not None
    except BadQueryError as err:  # the id is the other mode's (live vs test): say so, link nothing
        return cards.notice(f"{err} Nothing was linked.")
    except StripeUnavailableError:
        return cards.notice("Stripe did not answer, so the customer was not checked; try again in a minute.")
    if not exists:
        return cards.notice(f"Stripe has no customer {customer_id} in this account; nothing was linked.")
    try:
        await tenant.store.link(email, customer_id)
    except REDIS_ERRORS:
        return cards.notice(NO_CACHE.format(what="link"))
    await tenant.record(user=user, surface="slack_command", query=f"link {email} {customer_id}",
                        outcome="found", customer_id=customer_id, team=team)
    return cards.notice(f"Linked {email} to {customer_id}: lookups of this email now show that customer.")


async def _unlink(tenant: TenantRuntime, args: str, *, user: str, team: str | None) -> cards.SlackMessage:
    parts = args.split()
    if len(parts) != 1:
        return cards.notice("Use `/billing unlink EMAIL`.")
    try:
        email = _email_of(parts[0])
    except BadQueryError as err:
        return cards.notice(str(err))
    if tenant.store is None:
        return cards.notice(NO_CACHE.format(what="unlink"))
    try:
        removed = await tenant.store.unlink(email)
    except REDIS_ERRORS:
        return cards.notice(NO_CACHE.format(what="unlink"))
    await tenant.record(user=user, surface="slack_command", query=f"unlink {email}", outcome="found",
                        team=team)
    if not removed:
        return cards.notice(f"{email} had no link; lookups match it by email as before.")
    return cards.notice(f"Unlinked {email}: lookups match it by email again.")


RESYNC_LOCK_SECONDS = 6 * 3600


async def _resync(deps: SlackDeps, ack: Ack, respond: Respond, tenant: TenantRuntime, *, user: str) -> None:
    store = tenant.store
    if store is None:
        await ack_with(ack, cards.notice(NO_CACHE.format(what="resync")))
        return
    lock = store.namespace("slack").key("resync")
    try:
        acquired = await store.namespace("slack").set(lock, user, nx=True, ex=RESYNC_LOCK_SECONDS)
    except REDIS_ERRORS:
        acquired = None
        await ack_with(ack, cards.notice(NO_CACHE.format(what="resync")))
        return
    if not acquired:
        await ack_with(ack, cards.notice("A resync is already running; you will not need a second one."))
        return
    await ack_with(ack, cards.notice(
        "Resync started: every customer is read again from Stripe. I will tell you here when it is done."
    ))

    async def run() -> None:
        try:
            report = await Backfill(tenant.service.gateway, store).run(resume=False)
            text = (f"Resync done: {report.contexts_built:,} customers rebuilt in {report.seconds:.0f} s.")
        except Exception as err:
            log.exception("resync failed")
            text = f"Resync stopped: {type(err).__name__}. The cache keeps serving what it had; see the logs."
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await store.namespace("slack").delete(lock)
        await tell(respond, text)

    deps.spawn(run(), "slack-resync")


def register(app: AsyncApp, deps: SlackDeps) -> None:
    async def billing(ack: Ack, respond: Respond, command: dict[str, Any], context: AsyncBoltContext) -> None:
        await handle_billing(deps, ack, respond, command, context)

    app.command("/billing")(billing)
