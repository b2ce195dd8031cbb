"""The fake Slack Web API, exercised through the real slack_sdk / slack_bolt clients over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack_api import (
    BOT_ID,
    BOT_USER_ID,
    CHANNEL_ALERTS,
    OTHER_TEAM_ID,
    TEAM_ID,
    USER_ADMIN,
    USER_BOT,
    USER_DELETED,
    USER_GUEST,
    USER_MEMBER,
    USER_NO_EMAIL,
    USER_OWNER,
    USER_SINGLE_CHANNEL_GUEST,
    USER_STRANGER,
    FakeSlackAPI,
    RecordedCall,
)
from tests.fakes.slack_requests import (
    app_home_opened_event,
    block_action_body,
    event_body,
    message_shortcut_body,
    signed_headers,
    slash_command_body,
    url_verification_body,
)

SECRET = "test-signing-secret"
FIXED_CLOCK = 1700000000.0


@pytest.fixture
def fake() -> Iterator[FakeSlackAPI]:
    with FakeSlackAPI() as api:
        yield api


def client_for(fake: FakeSlackAPI, **kwargs: Any) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-test", base_url=fake.url, **kwargs)


# ---------------------------------------------------------------------- users and auth


async def test_auth_test_answers_the_bot_identity_and_records_the_token(fake: FakeSlackAPI) -> None:
    answer = await client_for(fake).auth_test()

    assert answer["team_id"] == TEAM_ID
    assert answer["user_id"] == BOT_USER_ID
    assert answer["bot_id"] == BOT_ID
    assert answer["team"] == "Acme Support"
    assert answer["url"].startswith("https://")
    [call] = fake.calls("auth.test")
    assert call.headers["authorization"] == "Bearer xoxb-test"
    assert call.token == "xoxb-test"
    assert call.fault is None


@pytest.mark.parametrize(
    ("user_id", "expected"),
    [
        (USER_MEMBER, {"is_admin": False, "is_owner": False, "is_restricted": False, "deleted": False}),
        (USER_ADMIN, {"is_admin": True, "is_owner": False}),
        (USER_OWNER, {"is_owner": True, "is_admin": True}),
        (USER_GUEST, {"is_restricted": True, "is_ultra_restricted": False}),
        (USER_SINGLE_CHANNEL_GUEST, {"is_restricted": True, "is_ultra_restricted": True}),
        (USER_DELETED, {"deleted": True}),
        (USER_BOT, {"is_bot": True}),
        (USER_STRANGER, {"team_id": OTHER_TEAM_ID, "is_stranger": True}),
    ],
)
async def test_users_info_gives_the_directory_flags_and_email(
    fake: FakeSlackAPI, user_id: str, expected: dict[str, Any]
) -> None:
    user = (await client_for(fake).users_info(user=user_id))["user"]

    assert user["id"] == user_id
    assert {key: user.get(key) for key in expected} == expected
    assert "@" in user["profile"]["email"]


async def test_users_info_without_email_unknown_user_and_added_user(fake: FakeSlackAPI) -> None:
    client = client_for(fake)

    no_email = (await client.users_info(user=USER_NO_EMAIL))["user"]
    assert "email" not in no_email["profile"]

    with pytest.raises(SlackApiError) as error:
        await client.users_info(user="U0NOBODY")
    assert error.value.response["error"] == "user_not_found"

    fake.add_user("U0JANE", email="jane@acme.com", is_admin=True, real_name="Jane Doe")
    jane = (await client.users_info(user="U0JANE"))["user"]
    assert jane["profile"]["email"] == "jane@acme.com"
    assert jane["is_admin"] is True
    assert [c.params["user"] for c in fake.calls("users.info")] == [USER_NO_EMAIL, "U0NOBODY", "U0JANE"]


async def test_missing_or_revoked_token_is_refused(fake: FakeSlackAPI) -> None:
    with pytest.raises(SlackApiError) as error:
        await AsyncWebClient(base_url=fake.url).auth_test()
    assert error.value.response["error"] == "not_authed"

    fake.revoke_token("xoxb-test")
    with pytest.raises(SlackApiError) as error:
        await client_for(fake).auth_test()
    assert error.value.response["error"] == "token_revoked"


async def test_usergroup_members(fake: FakeSlackAPI) -> None:
    fake.set_usergroup("S0BILLING", [USER_ADMIN, USER_MEMBER])
    client = client_for(fake)

    assert (await client.usergroups_users_list(usergroup="S0BILLING"))["users"] == [USER_ADMIN, USER_MEMBER]
    with pytest.raises(SlackApiError) as error:
        await client.usergroups_users_list(usergroup="S0NONE")
    assert error.value.response["error"] == "no_such_subteam"


# ---------------------------------------------------------------------- messages


async def test_post_message_then_history_with_metadata_newest_first() -> None:
    with FakeSlackAPI(clock=lambda: FIXED_CLOCK) as fake:
        client = client_for(fake)
        metadata = {"event_type": "billing_alert", "event_payload": {"incident": "cus_1:past_due"}}
        first = await client.chat_postMessage(
            channel="#billing-alerts", text="Payment failed", blocks=[{"type": "divider"}], metadata=metadata
        )
        reply = await client.chat_postMessage(channel=first["channel"], text="Retried", thread_ts=first["ts"])
        second = await client.chat_postMessage(channel=CHANNEL_ALERTS, text="Trial ends")

        assert first["channel"] == CHANNEL_ALERTS
        assert [first["ts"], reply["ts"], second["ts"]] == [
            "1700000000.000000",
            "1700000000.000100",
            "1700000000.000200",
        ]
        plain = await client.conversations_history(channel=CHANNEL_ALERTS)
        assert [m["ts"] for m in plain["messages"]] == [second["ts"], first["ts"]]  # no reply, newest first
        assert all("metadata" not in m for m in plain["messages"])

        full = await client.conversations_history(channel=CHANNEL_ALERTS, include_all_metadata=True)
        parent = full["messages"][1]
        assert parent["metadata"] == metadata
        assert parent["blocks"] == [{"type": "divider"}]
        assert parent["reply_count"] == 1
        assert "metadata" not in full["messages"][0]

        thread = await client.conversations_replies(channel=CHANNEL_ALERTS, ts=first["ts"])
        assert [m["text"] for m in thread["messages"]] == ["Payment failed", "Retried"]
        assert thread["messages"][1]["thread_ts"] == first["ts"]

        [stored_reply] = [m for m in fake.messages(CHANNEL_ALERTS) if m["ts"] == reply["ts"]]
        assert stored_reply["thread_ts"] == first["ts"]
        assert fake.calls("chat.postMessage")[0].params["metadata"] == metadata


async def test_history_honours_oldest_latest_limit_and_cursor() -> None:
    with FakeSlackAPI(clock=lambda: FIXED_CLOCK) as fake:
        client = client_for(fake)
        ts = [(await client.chat_postMessage(channel=CHANNEL_ALERTS, text=f"m{i}"))["ts"] for i in range(4)]

        after_first = await client.conversations_history(channel=CHANNEL_ALERTS, oldest=ts[0])
        assert [m["ts"] for m in after_first["messages"]] == [ts[3], ts[2], ts[1]]
        window = await client.conversations_history(
            channel=CHANNEL_ALERTS, oldest=ts[0], latest=ts[3], inclusive=True
        )
        assert [m["ts"] for m in window["messages"]] == [ts[3], ts[2], ts[1], ts[0]]
        before_last = await client.conversations_history(channel=CHANNEL_ALERTS, latest=ts[3])
        assert [m["ts"] for m in before_last["messages"]] == [ts[2], ts[1], ts[0]]

        page = await client.conversations_history(channel=CHANNEL_ALERTS, limit=3)
        assert [m["ts"] for m in page["messages"]] == [ts[3], ts[2], ts[1]]
        assert page["has_more"] is True
        rest = await client.conversations_history(
            channel=CHANNEL_ALERTS, limit=3, cursor=page["response_metadata"]["next_cursor"]
        )
        assert [m["ts"] for m in rest["messages"]] == [ts[0]]
        assert rest["has_more"] is False

        with pytest.raises(SlackApiError) as error:  # history wants a channel id, not a name
            await client.conversations_history(channel="#billing-alerts")
        assert error.value.response["error"] == "channel_not_found"


async def test_seeded_message_is_seen_by_history() -> None:
    with FakeSlackAPI(clock=lambda: FIXED_CLOCK) as fake:
        ts = fake.add_message(CHANNEL_ALERTS, text="posted before a crash", metadata={"event_type": "x"})

        history = await client_for(fake).conversations_history(
            channel=CHANNEL_ALERTS, include_all_metadata=True
        )

        assert [(m["ts"], m["metadata"]) for m in history["messages"]] == [(ts, {"event_type": "x"})]


async def test_ephemeral_update_permalink_and_home_view(fake: FakeSlackAPI) -> None:
    client = client_for(fake)

    ephemeral = await client.chat_postEphemeral(channel=CHANNEL_ALERTS, user=USER_ADMIN, text="card")
    assert ephemeral["message_ts"]
    assert fake.ephemerals(user=USER_ADMIN)[0]["text"] == "card"
    assert fake.messages(CHANNEL_ALERTS) == []  # ephemeral messages are not in the channel

    posted = await client.chat_postMessage(channel=CHANNEL_ALERTS, text="v1")
    updated = await client.chat_update(channel=CHANNEL_ALERTS, ts=posted["ts"], text="v2")
    assert updated["text"] == "v2"
    assert fake.messages(CHANNEL_ALERTS)[0]["text"] == "v2"
    link = await client.chat_getPermalink(channel=CHANNEL_ALERTS, message_ts=posted["ts"])
    assert link["permalink"].endswith(f"/archives/{CHANNEL_ALERTS}/p{posted['ts'].replace('.', '')}")
    with pytest.raises(SlackApiError) as error:
        await client.chat_update(channel=CHANNEL_ALERTS, ts="1.000000", text="x")
    assert error.value.response["error"] == "message_not_found"

    view = {"type": "home", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Sync ok"}}]}
    published = await client.views_publish(user_id=USER_ADMIN, view=view)
    assert published["view"]["id"]
    home = fake.home_view(USER_ADMIN)
    assert home is not None
    assert home["blocks"] == view["blocks"]
    assert fake.home_view(USER_MEMBER) is None


async def test_bot_outside_the_channel_gets_not_in_channel(fake: FakeSlackAPI) -> None:
    fake.set_bot_channels([CHANNEL_ALERTS])

    with pytest.raises(SlackApiError) as error:
        await client_for(fake).chat_postEphemeral(channel="C0ELSEWHERE", user=USER_ADMIN, text="card")

    assert error.value.response["error"] == "not_in_channel"


# ---------------------------------------------------------------------- faults


async def test_rate_limit_is_retried_by_the_builtin_handler(fake: FakeSlackAPI) -> None:
    fake.fail_next("chat.postMessage", "rate_limited")
    client = client_for(fake, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])

    answer = await client.chat_postMessage(channel=CHANNEL_ALERTS, text="alert")

    assert answer["ok"] is True
    attempts = fake.calls("chat.postMessage")
    assert [c.fault for c in attempts] == ["rate_limited", None]
    assert attempts[1].received_at - attempts[0].received_at >= 0.99  # Retry-After: 1 was honoured
    assert [m["text"] for m in fake.messages(CHANNEL_ALERTS)] == ["alert"]


async def test_rate_limit_without_handler_is_a_429_with_retry_after(fake: FakeSlackAPI) -> None:
    fake.fail_next("users.info", "rate_limited")

    with pytest.raises(SlackApiError) as error:
        await client_for(fake).users_info(user=USER_ADMIN)

    assert error.value.response.status_code == 429
    assert error.value.response.headers["Retry-After"] == "1"
    assert error.value.response["error"] == "ratelimited"


async def test_accept_then_drop_raises_a_client_error_but_the_message_is_stored(fake: FakeSlackAPI) -> None:
    fake.fail_next("chat.postMessage", "accept_then_drop")

    with pytest.raises(aiohttp.ClientError):
        await client_for(fake, retry_handlers=[]).chat_postMessage(channel=CHANNEL_ALERTS, text="alert")

    assert [m["text"] for m in fake.messages(CHANNEL_ALERTS)] == ["alert"]
    assert [c.fault for c in fake.calls("chat.postMessage")] == ["accept_then_drop"]


async def test_default_connection_retry_after_a_drop_posts_twice(fake: FakeSlackAPI) -> None:
    """slack_sdk's default handlers retry a dropped connection once: the alert lands twice."""
    fake.fail_next("chat.postMessage", "accept_then_drop")

    answer = await client_for(fake).chat_postMessage(channel=CHANNEL_ALERTS, text="alert")

    assert answer["ok"] is True
    assert [m["text"] for m in fake.messages(CHANNEL_ALERTS)] == ["alert", "alert"]


async def test_server_error_and_down(fake: FakeSlackAPI) -> None:
    client = client_for(fake)
    fake.fail_next("users.info", "server_error")
    with pytest.raises(SlackApiError) as error:
        await client.users_info(user=USER_ADMIN)
    assert error.value.response.status_code == 500

    fake.set_down(True)
    for call in (client.auth_test(), client.chat_postMessage(channel=CHANNEL_ALERTS, text="x")):
        with pytest.raises(SlackApiError) as error:
            await call
        assert error.value.response.status_code == 503
    assert fake.messages() == []

    fake.set_down(False)
    assert (await client.users_info(user=USER_ADMIN))["ok"] is True
    assert [c.fault for c in fake.calls()] == ["server_error", "down", "down", None]


async def test_hang_times_the_client_out_then_answers_late(fake: FakeSlackAPI) -> None:
    fake.fail_next("users.info", "hang", hang_seconds=30)
    with pytest.raises(asyncio.TimeoutError):
        await client_for(fake, timeout=0.3, retry_handlers=[]).users_info(user=USER_ADMIN)

    fake.fail_next("users.info", "hang", hang_seconds=0.2)
    answer = await client_for(fake, timeout=5).users_info(user=USER_ADMIN)
    assert answer["user"]["is_admin"] is True
    assert [c.fault for c in fake.calls("users.info")] == ["hang", "hang"]


def test_fail_next_refuses_unknown_kinds_and_methods(fake: FakeSlackAPI) -> None:
    with pytest.raises(ValueError, match="kind"):
        fake.fail_next("chat.postMessage", "explode")
    with pytest.raises(ValueError, match=r"chat\.postMesage"):
        fake.fail_next("chat.postMesage", "server_error")


# ---------------------------------------------------------------------- response_url


async def test_response_url_posts_from_bolt_respond_are_recorded(fake: FakeSlackAPI) -> None:
    respond = AsyncRespond(response_url=fake.response_url("cmd-1"))

    result = await respond(text="Looking up…", response_type="ephemeral", replace_original=False)

    assert result.status_code == 200
    [posted] = fake.responses("cmd-1")
    assert posted.payload["text"] == "Looking up…"
    assert posted.payload["response_type"] == "ephemeral"
    assert fake.responses("other") == []
    assert fake.wait_for_response("cmd-1") == [posted]


async def test_response_url_faults(fake: FakeSlackAPI) -> None:
    fake.fail_next("response_url", "server_error")

    result = await AsyncRespond(response_url=fake.response_url("r"))(text="x")

    assert result.status_code == 500
    assert [r.fault for r in fake.responses("r")] == ["server_error"]


# ---------------------------------------------------------------------- waiting


def test_wait_for_polls_until_a_call_made_by_another_thread(fake: FakeSlackAPI) -> None:
    def post_from_thread() -> None:
        asyncio.run(client_for(fake).chat_postMessage(channel=CHANNEL_ALERTS, text="from thread"))

    worker = threading.Thread(target=post_from_thread)
    worker.start()
    try:
        found = fake.wait_for(lambda c: c.method == "chat.postMessage" and c.params["text"] == "from thread")
    finally:
        worker.join(10)
    assert len(found) == 1
    assert isinstance(found[0], RecordedCall)


def test_wait_for_raises_at_the_deadline(fake: FakeSlackAPI) -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"views\.publish"):
        fake.wait_for("views.publish", timeout=0.2)
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------------- signed requests and bolt


def test_signed_headers_pass_the_verifier_and_old_ones_do_not() -> None:
    body = slash_command_body(text="jane@acme.com", user_id=USER_ADMIN)
    verifier = SignatureVerifier(SECRET)

    assert verifier.is_valid_request(body, signed_headers(body, SECRET))
    six_minutes_ago = int(time.time()) - 360
    assert not verifier.is_valid_request(body, signed_headers(body, SECRET, timestamp=six_minutes_ago))
    assert not verifier.is_valid_request(body, signed_headers(body, "another-secret"))
    assert not verifier.is_valid_request(body + b"x", signed_headers(body, SECRET))


async def test_bolt_app_talks_to_the_fake_for_every_request_shape(fake: FakeSlackAPI) -> None:
    app = AsyncApp(signing_secret=SECRET, client=client_for(fake))
    seen: dict[str, Any] = {}

    @app.command("/billing")
    async def billing(ack: Any, respond: Any, command: dict[str, Any], client: AsyncWebClient) -> None:
        await ack("Looking up…")
        user = (await client.users_info(user=command["user_id"]))["user"]
        await respond(text=f"{command['text']} for {user['profile']['email']}", response_type="ephemeral")

    @app.shortcut("billing_context")
    async def shortcut(ack: Any, respond: Any, shortcut: dict[str, Any]) -> None:
        await ack()
        seen["shortcut"] = shortcut
        await respond(text="card", response_type="ephemeral")

    @app.action("refresh")
    async def refresh(ack: Any, respond: Any, action: dict[str, Any]) -> None:
        await ack()
        await respond(text=f"refreshed {action['value']}", replace_original=True)

    @app.event("app_home_opened")
    async def home(event: dict[str, Any], client: AsyncWebClient) -> None:
        await client.views_publish(user_id=event["user"], view={"type": "home", "blocks": []})

    async def dispatch(body: bytes, timestamp: int | None = None) -> Any:
        headers: dict[str, str | Sequence[str]] = {**signed_headers(body, SECRET, timestamp)}
        return await app.async_dispatch(AsyncBoltRequest(body=body.decode(), headers=headers))

    command = slash_command_body(
        text="cus_123", user_id=USER_ADMIN, response_url=fake.response_url("command")
    )
    acked = await dispatch(command)
    assert acked.status == 200
    assert acked.body == "Looking up…"  # bolt acks a bare text as plain text
    [card] = await fake.wait_for_response_async("command")
    assert card.payload["text"] == "cus_123 for admin@acme-support.example"
    assert fake.calls("auth.test")  # bolt authorized its token against the fake

    shortcut_body = message_shortcut_body(
        user_id=USER_ADMIN,
        message_user=USER_STRANGER,
        message_team=OTHER_TEAM_ID,
        response_url=fake.response_url("shortcut"),
    )
    assert (await dispatch(shortcut_body)).status == 200
    await fake.wait_for_response_async("shortcut")
    assert seen["shortcut"]["message"]["user"] == USER_STRANGER
    assert seen["shortcut"]["message"]["team"] == OTHER_TEAM_ID
    assert seen["shortcut"]["user"]["id"] == USER_ADMIN

    action = block_action_body("refresh", "cus_123", USER_ADMIN, fake.response_url("action"), CHANNEL_ALERTS)
    assert (await dispatch(action)).status == 200
    [refreshed] = await fake.wait_for_response_async("action")
    assert refreshed.payload == {"text": "refreshed cus_123", "replace_original": True}

    assert (await dispatch(event_body(app_home_opened_event(USER_ADMIN)))).status == 200
    [publish] = await fake.wait_for_async("views.publish")
    assert publish.params["user_id"] == USER_ADMIN

    verification = await dispatch(url_verification_body("challenge-42"))
    assert json.loads(verification.body) == {"challenge": "challenge-42"}

    stale = slash_command_body(text="x", response_url=fake.response_url("stale"))
    refused = await dispatch(stale, timestamp=int(time.time()) - 360)
    assert refused.status == 401


# ---------------------------------------------------------------------- lifecycle


async def test_stop_ends_the_thread_and_releases_the_port_even_during_a_hang() -> None:
    fake = FakeSlackAPI().start()
    port = fake.port
    fake.fail_next("users.info", "hang", hang_seconds=60)
    pending = asyncio.ensure_future(
        client_for(fake, timeout=30, retry_handlers=[]).users_info(user="U0MEMBER")
    )
    await fake.wait_for_async("users.info")

    started = time.monotonic()
    await asyncio.to_thread(fake.stop)
    assert time.monotonic() - started < 5

    with pytest.raises(aiohttp.ClientError):
        await pending  # the hung request is closed, not answered
    assert not [t for t in threading.enumerate() if t.name == f"fake-slack-api-{port}"]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
    fake.stop()  # idempotent
