"""``/billing`` through the real ASGI app: signed requests, acks inside 3 s, cards, refusals, subcommands."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.bot.slack.conftest import SlackHarness, all_text
from tests.fakes.slack_api import (
    USER_ADMIN,
    USER_BOT,
    USER_DELETED,
    USER_GUEST,
    USER_MEMBER,
    USER_SINGLE_CHANNEL_GUEST,
    USER_STRANGER,
)
from tests.fakes.slack_requests import slack_mailto, slash_command_body

ACK_LIMIT_SECONDS = 3.0


def command(h: SlackHarness, text: str, *, user: str = USER_MEMBER, name: str = "cmd") -> bytes:
    return slash_command_body(text=text, user_id=user, response_url=h.slack.response_url(name))


def ack_body(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body.get("response_type") == "ephemeral"
    return body


async def test_past_due_customer_card_from_stripe_then_from_cache(harness: SlackHarness) -> None:
    # Cold: Stripe answers quickly (sandbox), so the card is the ack itself or follows by response_url.
    response, _ = await harness.timed_post(command(harness, "jane@acme.com", name="first"))
    first = ack_body(response)
    if "Looking up" in all_text(first):
        first = (await harness.slack.wait_for_response_async("first"))[-1].payload
    text = all_text(first)
    assert "Jane Doe" in text and "past_due" in text.lower().replace(" ", "_")
    assert "29.00" in text  # MRR and the failed amount, to the cent
    # Cached: the ack is the card, no Stripe request.
    harness.sandbox.control.clear_requests()
    cached = ack_body(await harness.post(command(harness, "jane@acme.com", name="second")))
    assert "Jane Doe" in all_text(cached)
    assert harness.sandbox.control.requests() == []
    assert not harness.slack.responses("second")


async def test_mailto_input_is_accepted(harness: SlackHarness) -> None:
    body = ack_body(await harness.post(command(harness, slack_mailto("jane@acme.com"), name="m")))
    if "Looking up" in all_text(body):
        body = (await harness.slack.wait_for_response_async("m"))[-1].payload
    assert "Jane Doe" in all_text(body)


async def test_ack_within_three_seconds_while_stripe_takes_two(harness: SlackHarness) -> None:
    harness.sandbox.control.set_faults(latency_ms=2000)
    response, elapsed = await harness.timed_post(command(harness, "bigco@example.com", name="slow"))
    body = ack_body(response)
    assert elapsed < ACK_LIMIT_SECONDS, f"ack took {elapsed:.2f} s"
    assert "Looking up" in all_text(body)
    follow = (await harness.slack.wait_for_response_async("slow", timeout=30))[-1].payload
    assert follow.get("replace_original") is True
    assert "bigco@example.com" in all_text(follow)


async def test_stripe_down_and_nothing_cached_is_one_sentence(harness: SlackHarness) -> None:
    harness.sandbox.control.set_faults(error_probability=1.0, error_status=500)
    body = ack_body(await harness.post(command(harness, "jane@acme.com", name="down")))
    if "Looking up" in all_text(body):
        body = (await harness.slack.wait_for_response_async("down"))[-1].payload
    assert "Stripe did not answer" in all_text(body)


async def test_stale_card_says_stripe_did_not_answer(harness: SlackHarness) -> None:
    ack_body(await harness.post(command(harness, "jane@acme.com", name="warm")))
    await harness.deps.drain()
    harness.runtime.service.max_staleness = harness.runtime.service.max_staleness * 0  # everything is stale
    harness.sandbox.control.set_faults(error_probability=1.0, error_status=503)
    body = ack_body(await harness.post(command(harness, "jane@acme.com", name="stale")))
    if "Looking up" in all_text(body):
        body = (await harness.slack.wait_for_response_async("stale"))[-1].payload
    text = all_text(body)
    assert "Stripe did not answer; showing the card cached" in text and "Jane Doe" in text


async def test_not_found_says_what_was_tried(harness: SlackHarness) -> None:
    body = ack_body(await harness.post(command(harness, "nobody@nowhere.example", name="nf")))
    if "Looking up" in all_text(body):
        body = (await harness.slack.wait_for_response_async("nf"))[-1].payload
    text = all_text(body)
    assert "No Stripe customer found for nobody@nowhere.example" in text
    assert "Stripe search" in text


@pytest.mark.parametrize("text", [
    "garbage", "x" * 10_000, "jane@acme.com bigco@example.com", "<!channel> *pay*", "cus_", "@@@",
])
async def test_bad_input_is_one_clear_ephemeral_sentence(harness: SlackHarness, text: str) -> None:
    harness.sandbox.control.clear_requests()
    body = ack_body(await harness.post(command(harness, text, name="bad")))
    shown = all_text(body)
    assert "not an email" in shown or "characters long" in shown
    assert "<!channel>" not in shown  # escaped
    assert len(body.get("blocks") or []) <= 2
    assert harness.sandbox.control.requests() == []  # no Stripe call for bad input


async def test_empty_and_help_show_usage(harness: SlackHarness) -> None:
    for text in ("", "help", "HELP"):
        shown = all_text(ack_body(await harness.post(command(harness, text))))
        assert "/billing" in shown and "link" in shown and "Billing context" in shown


@pytest.mark.parametrize(
    "user", [USER_GUEST, USER_SINGLE_CHANNEL_GUEST, USER_DELETED, USER_BOT, USER_STRANGER]
)
async def test_refused_users_see_no_billing_data(harness: SlackHarness, user: str) -> None:
    body = ack_body(await harness.post(command(harness, "jane@acme.com", user=user, name="r")))
    text = all_text(body)
    assert "Jane" not in text and "29.00" not in text
    assert any(word in text for word in ("guests", "not bots", "workspace that installed"))
    assert not harness.slack.responses("r")
    audit = await harness.runtime.default.audit.read(user=user)  # type: ignore[union-attr]
    assert [e.outcome for e in audit] == ["refused"]


async def test_allow_list_by_user_group_and_channel(harness: SlackHarness) -> None:
    from bot.slack.access import AccessPolicy

    harness.slack.set_usergroup("S0BILLING", [USER_ADMIN])
    policy = AccessPolicy(harness.deps.client, None, allowed={"S0BILLING", "C0SUPPORT"})
    assert (await policy.check(USER_ADMIN, team_id="T0001")).allowed
    assert not (await policy.check(USER_MEMBER, team_id="T0001")).allowed
    assert (await policy.check(USER_MEMBER, team_id="T0001", channel_id="C0SUPPORT")).allowed
    assert not (await policy.check(USER_GUEST, team_id="T0001", channel_id="C0SUPPORT")).allowed


async def test_bad_signature_and_old_timestamp_are_refused(harness: SlackHarness) -> None:
    body = command(harness, "jane@acme.com", name="sig")
    assert (await harness.post(body, secret="wrong-secret")).status_code == 401
    six_minutes_ago = int(time.time()) - 360
    assert (await harness.post(body, timestamp=six_minutes_ago)).status_code == 401
    unsigned = await harness.http.post("/slack/events", content=body)
    assert unsigned.status_code == 401
    assert not harness.slack.responses("sig")
    assert harness.slack.calls("users.info") == []  # nothing ran


async def test_oversized_body_is_refused_before_bolt(harness: SlackHarness) -> None:
    body = command(harness, "a" * 300_000)
    assert (await harness.post(body)).status_code == 413


async def test_status_shows_sync_health(harness: SlackHarness) -> None:
    text = all_text(ack_body(await harness.post(command(harness, "status"))))
    assert "cached" in text.lower()


async def test_link_and_unlink_are_for_admins_and_win_over_matching(harness: SlackHarness) -> None:
    store = harness.runtime.store
    assert store is not None
    # jane's customer id, from a lookup
    context = await harness.runtime.service.lookup("bigco@example.com")
    assert context.customer is not None
    bigco = context.customer.id
    refused = all_text(ack_body(await harness.post(command(harness, f"link jane@acme.com {bigco}"))))
    assert "admins" in refused
    assert await store.linked_customer("jane@acme.com") is None

    body = ack_body(await harness.post(command(harness, f"link Jane@Acme.com {bigco}", user=USER_ADMIN,
                                               name="link")))
    if "Checking" in all_text(body):
        body = (await harness.slack.wait_for_response_async("link"))[-1].payload
    assert f"Linked jane@acme.com to {bigco}" in all_text(body)
    card = ack_body(await harness.post(command(harness, "jane@acme.com", name="after")))
    if "Looking up" in all_text(card):
        card = (await harness.slack.wait_for_response_async("after"))[-1].payload
    assert "bigco@example.com" in all_text(card)

    gone = all_text(ack_body(await harness.post(command(harness, "unlink jane@acme.com", user=USER_ADMIN))))
    assert "Unlinked jane@acme.com" in gone
    assert await store.linked_customer("jane@acme.com") is None


async def test_link_refuses_a_customer_stripe_does_not_have(harness: SlackHarness) -> None:
    text = "link jane@acme.com cus_doesnotexist"
    body = ack_body(await harness.post(command(harness, text, user=USER_ADMIN, name="l")))
    if "Checking" in all_text(body):
        body = (await harness.slack.wait_for_response_async("l"))[-1].payload
    assert "has no customer cus_doesnotexist" in all_text(body)


async def test_link_to_a_customer_of_the_other_mode_says_so(harness: SlackHarness) -> None:
    # "Stripe has no customer" would have the admin hunt for a customer that is there, in live mode.
    from tests.billing import stripe_factory as sf

    harness.sandbox.control.load([sf.customer(cid="cus_LiveLink", email="live@acme.com", livemode=True)])
    body = ack_body(await harness.post(command(harness, "link jane@acme.com cus_LiveLink", user=USER_ADMIN,
                                               name="live")))
    if "Checking" in all_text(body):
        body = (await harness.slack.wait_for_response_async("live"))[-1].payload
    assert "cus_LiveLink is a live-mode customer and STRIPE_API_KEY is a test-mode key" in all_text(body)


async def test_resync_is_for_admins_and_reports_when_done(harness: SlackHarness) -> None:
    assert "admins" in all_text(ack_body(await harness.post(command(harness, "resync"))))
    started = all_text(ack_body(await harness.post(command(harness, "resync", user=USER_ADMIN, name="rs"))))
    assert "Resync started" in started
    done = await harness.slack.wait_for_response_async("rs", timeout=60)
    assert "Resync done" in all_text(done[-1].payload)
    store = harness.runtime.store
    assert store is not None
    assert (await store.health()).customers_cached > 10


async def test_every_lookup_is_audited(harness: SlackHarness) -> None:
    ack_body(await harness.post(command(harness, "jane@acme.com", name="a1")))
    await harness.deps.drain()  # a lookup that asks Stripe finishes after its ack
    ack_body(await harness.post(command(harness, "nobody@nowhere.example", name="a2")))
    await harness.deps.drain()
    audit = harness.runtime.default.audit
    assert audit is not None
    entries = await audit.read(user=USER_MEMBER)
    assert [(e.query, e.outcome, e.surface) for e in entries] == [
        ("nobody@nowhere.example", "not_found", "slack_command"),
        ("jane@acme.com", "found", "slack_command"),
    ]
    assert entries[1].customer_id and entries[1].customer_id.startswith("cus_")
    assert json.dumps(entries[1].to_dict())
