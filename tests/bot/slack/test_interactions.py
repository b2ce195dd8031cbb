"""The message shortcut, the card's buttons and the App Home tab, through the real ASGI app."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bot.slack.conftest import SlackHarness, all_text
from tests.fakes.slack_api import (
    CHANNEL_GENERAL,
    OTHER_TEAM_ID,
    USER_BOT,
    USER_DELETED,
    USER_GUEST,
    USER_MEMBER,
    USER_NO_EMAIL,
    USER_STRANGER,
    USER_STRANGER_NO_EMAIL,
)
from tests.fakes.slack_requests import (
    app_home_opened_event,
    block_action_body,
    event_body,
    message_shortcut_body,
    url_verification_body,
)

JANE_SLACK = "U0JANE"


async def shortcut(h: SlackHarness, *, clicker: str = USER_MEMBER, author: str | None = JANE_SLACK,
                   name: str = "sc", **extra: Any) -> dict[str, Any]:
    body = message_shortcut_body(user_id=clicker, message_user=author,
                                 response_url=h.slack.response_url(name), **extra)
    response = await h.post(body)
    assert response.status_code == 200, response.text
    answers = await h.slack.wait_for_response_async(name, timeout=30)
    payload: dict[str, Any] = answers[-1].payload
    assert payload.get("response_type") == "ephemeral"
    return payload


async def test_shortcut_shows_the_authors_card_privately(harness: SlackHarness) -> None:
    harness.slack.add_user(JANE_SLACK, email="jane@acme.com", real_name="Jane Doe")
    payload = await shortcut(harness)
    text = all_text(payload)
    assert "Jane Doe" in text and "29.00" in text
    assert harness.slack.messages(CHANNEL_GENERAL) == []  # nothing public
    audit = await harness.runtime.default.audit.read(user=USER_MEMBER)  # type: ignore[union-attr]
    assert audit[0].surface == "slack_shortcut" and audit[0].outcome == "found"


@pytest.mark.parametrize(("author", "expected"), [
    (USER_NO_EMAIL, "shows no email"),
    (USER_STRANGER_NO_EMAIL, "shows no email"),
    (USER_BOT, "bot"),
    (USER_DELETED, "deactivated"),
    ("U0UNKNOWN", "did not say who wrote"),
])
async def test_shortcut_on_authors_without_a_customer_is_one_sentence(
    harness: SlackHarness, author: str, expected: str
) -> None:
    text = all_text(await shortcut(harness, author=author))
    assert expected in text


async def test_shortcut_on_a_bot_message(harness: SlackHarness) -> None:
    text = all_text(await shortcut(harness, author=None, message_bot_id="B0OTHER"))
    assert "app or a bot" in text


async def test_shortcut_author_with_no_stripe_customer(harness: SlackHarness) -> None:
    harness.slack.add_user("U0NEW", email="someone-new@example.org")
    assert "No Stripe customer found for someone-new@example.org" in all_text(
        await shortcut(harness, author="U0NEW"))


@pytest.mark.parametrize("clicker", [USER_GUEST, USER_STRANGER])
async def test_guests_and_strangers_cannot_use_the_shortcut(harness: SlackHarness, clicker: str) -> None:
    harness.slack.add_user(JANE_SLACK, email="jane@acme.com")
    extra = {"user_team_id": OTHER_TEAM_ID} if clicker == USER_STRANGER else {}
    text = all_text(await shortcut(harness, clicker=clicker, **extra))
    assert "Jane" not in text and "29.00" not in text
    assert not [c for c in harness.slack.calls("users.info") if c.params.get("user") == JANE_SLACK]


async def card_for(h: SlackHarness, query: str) -> str:
    context = await h.runtime.service.lookup(query)
    assert context.customer is not None
    return context.customer.id


async def test_refresh_rereads_stripe_and_replaces_the_card(harness: SlackHarness) -> None:
    customer_id = await card_for(harness, "jane@acme.com")
    harness.sandbox.control.clear_requests()
    body = block_action_body("billing_refresh", customer_id, response_url=harness.slack.response_url("rf"))
    assert (await harness.post(body)).status_code == 200
    payload = (await harness.slack.wait_for_response_async("rf", timeout=30))[-1].payload
    assert payload["replace_original"] is True and "Jane Doe" in all_text(payload)
    assert any(customer_id in r["path"] for r in harness.sandbox.control.requests())


async def test_switch_customer_from_the_select(harness: SlackHarness) -> None:
    other = await card_for(harness, "bigco@example.com")
    body = block_action_body("billing_switch", selected_option_value=other,
                             response_url=harness.slack.response_url("sw"))
    assert (await harness.post(body)).status_code == 200
    payload = (await harness.slack.wait_for_response_async("sw", timeout=30))[-1].payload
    assert "bigco@example.com" in all_text(payload)


async def test_share_posts_a_summary_saying_who_shared_it(harness: SlackHarness) -> None:
    customer_id = await card_for(harness, "jane@acme.com")
    body = block_action_body("billing_share", customer_id, response_url=harness.slack.response_url("sh"))
    assert (await harness.post(body)).status_code == 200
    posted = await harness.slack.wait_for_async("chat.postMessage", timeout=30)
    message = posted[-1].params
    assert message["channel"] == CHANNEL_GENERAL
    assert f"<@{USER_MEMBER}>" in all_text(message) and "Jane Doe" in all_text(message)
    assert '"billing_refresh"' not in str(message)  # a channel summary has no buttons


async def test_share_in_a_channel_the_bot_is_not_in_says_so(harness: SlackHarness) -> None:
    harness.slack.set_bot_channels([])
    customer_id = await card_for(harness, "jane@acme.com")
    body = block_action_body("billing_share", customer_id, response_url=harness.slack.response_url("nc"))
    assert (await harness.post(body)).status_code == 200
    payload = (await harness.slack.wait_for_response_async("nc", timeout=30))[-1].payload
    assert "Invite @Billing Lens" in all_text(payload)


async def test_buttons_refuse_guests(harness: SlackHarness) -> None:
    customer_id = await card_for(harness, "jane@acme.com")
    for action in ("billing_refresh", "billing_share"):
        body = block_action_body(action, customer_id, user_id=USER_GUEST,
                                 response_url=harness.slack.response_url(action))
        assert (await harness.post(body)).status_code == 200
        payload = (await harness.slack.wait_for_response_async(action, timeout=30))[-1].payload
        assert "guests" in all_text(payload) and "Jane" not in all_text(payload)
    assert harness.slack.calls("chat.postMessage") == []


async def test_a_forged_button_value_is_refused(harness: SlackHarness) -> None:
    body = block_action_body("billing_refresh", "<!channel>", response_url=harness.slack.response_url("fv"))
    assert (await harness.post(body)).status_code == 200
    payload = (await harness.slack.wait_for_response_async("fv", timeout=30))[-1].payload
    assert "no longer names a customer" in all_text(payload)


async def test_open_in_stripe_link_is_acknowledged(harness: SlackHarness) -> None:
    assert (await harness.post(block_action_body("billing_open_stripe", "x"))).status_code == 200


def published_to(user: str) -> Any:
    return lambda call: call.method == "views.publish" and call.params.get("user_id") == user


async def test_app_home_shows_health_to_members_and_nothing_to_guests(harness: SlackHarness) -> None:
    await card_for(harness, "jane@acme.com")
    assert (await harness.post(event_body(app_home_opened_event(USER_MEMBER)))).status_code == 200
    await harness.slack.wait_for_async(published_to(USER_MEMBER), timeout=30)
    member_view = harness.slack.home_view(USER_MEMBER)
    assert member_view is not None and "cached" in all_text(member_view).lower()

    assert (await harness.post(event_body(app_home_opened_event(USER_GUEST)))).status_code == 200
    await harness.slack.wait_for_async(published_to(USER_GUEST), timeout=30)
    guest_view = harness.slack.home_view(USER_GUEST)
    assert guest_view is not None
    guest_text = all_text(guest_view)
    assert "do not have access" in guest_text and "cached" not in guest_text.lower()


async def test_url_verification_is_answered(harness: SlackHarness) -> None:
    response = await harness.post(url_verification_body("chal-123"), content_type="application/json")
    assert response.status_code == 200 and "chal-123" in response.text
