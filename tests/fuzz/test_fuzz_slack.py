"""Fuzzing the real Slack handlers: arbitrary ``/billing`` text and arbitrary message-shortcut payloads.

The handlers run with the harness's real dependencies (runtime over the sandbox and Redis, access
policy asking the fake Slack Web API), called directly with a recording ``ack`` and ``respond``: each
request gets exactly one ephemeral answer (a card or one sentence), never an exception, and no ``<!``
(a broadcast mention such as ``<!channel>``) in any text, whatever the input held.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from slack_bolt.context.async_context import AsyncBoltContext

from bot.slack.commands import handle_billing
from bot.slack.interactions import handle_shortcut
from tests.bot.slack.conftest import SlackHarness, texts
from tests.fakes.slack_api import CHANNEL_GENERAL, TEAM_ID, USER_MEMBER

BROADCASTS = ["<!channel>", "<!here>", "<!everyone>", "<!subteam^S0123|@support>", "<!date^1|x>",
              "<@U0ADMIN>", "<https://evil.example|click>", "&lt;!channel&gt;", "\u202e<!here>"]
WORDS = ["", "help ", "status ", "link ", "unlink ", "resync ", "jane@acme.com ", "cus_",
         "nobody@example.com ", "<mailto:jane@acme.com|jane@acme.com> ", "HELP ", "  "]
command_texts = st.one_of(
    st.text(max_size=120),
    st.builds(lambda word, inject, rest: f"{word}{inject}{rest}", st.sampled_from(WORDS),
              st.sampled_from(BROADCASTS), st.text(max_size=40)),
    st.builds(lambda local, inject: f"{local}{inject}@example.com", st.text(
        alphabet="abcxyz.+_-<>!&|", min_size=1, max_size=12), st.sampled_from(BROADCASTS)),
)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, text: str | None = None, **payload: Any) -> None:
        self.calls.append({"text": text, **payload} if text is not None else payload)


def context() -> AsyncBoltContext:
    return AsyncBoltContext({"team_id": TEAM_ID, "user_id": USER_MEMBER, "channel_id": CHANNEL_GENERAL})


def assert_one_private_answer(message: dict[str, Any]) -> None:
    assert message.get("response_type") == "ephemeral", message
    assert str(message.get("text") or "").strip(), message
    for text in texts(message):
        assert "<!" not in text, text


@FUZZ
@given(text=command_texts)
@example(text="jane@acme.com")
@example(text="<!channel> jane@acme.com")
@example(text="jane@acme.com <!here>")
@example(text="link <!channel>@x.com cus_123")
async def test_any_command_text_gets_one_private_answer(harness: SlackHarness, text: str) -> None:
    ack, respond = Recorder(), Recorder()
    command = {"text": text, "user_id": USER_MEMBER, "channel_id": CHANNEL_GENERAL, "team_id": TEAM_ID,
               "command": "/billing", "response_url": harness.slack.response_url("fuzz")}
    await handle_billing(harness.deps, ack, respond, command, context())
    await harness.deps.drain()
    assert len(ack.calls) == 1, ack.calls
    assert len(respond.calls) <= 1, respond.calls
    answer = respond.calls[-1] if respond.calls else ack.calls[0]
    assert_one_private_answer(ack.calls[0])
    assert_one_private_answer(answer)


authors = st.one_of(st.sampled_from(["U0JANE", USER_MEMBER, "U0NOBODY", "U0NOEMAIL", "", "B0001"]),
                    st.text(max_size=20))


@FUZZ
@given(message_text=st.one_of(st.text(max_size=200), st.sampled_from(BROADCASTS)), author=authors,
       bot=st.booleans())
async def test_any_shortcut_payload_gets_one_private_answer(
    harness: SlackHarness, message_text: str, author: str, bot: bool,
) -> None:
    harness.slack.add_user("U0JANE", email="jane@acme.com", real_name="Jane <!channel> Doe")
    message: dict[str, Any] = {"type": "message", "text": message_text, "ts": "1700000000.000100",
                               "team": TEAM_ID}
    if author:
        message["user"] = author
    if bot:
        message["bot_id"] = "B0001"
    body = {"type": "message_action", "callback_id": "billing_context", "team": {"id": TEAM_ID},
            "user": {"id": USER_MEMBER, "team_id": TEAM_ID}, "channel": {"id": CHANNEL_GENERAL},
            "message": message, "response_url": harness.slack.response_url("fuzz")}
    ack, respond = Recorder(), Recorder()
    await handle_shortcut(harness.deps, ack, respond, body, context())
    await harness.deps.drain()
    assert len(ack.calls) == 1 and len(respond.calls) == 1, (ack.calls, respond.calls)
    assert_one_private_answer(respond.calls[0])
