"""``serve --socket-mode``: the same bolt app over a Socket Mode connection, reconnects counted.

A loopback stand-in for Slack's Socket Mode endpoint (``apps.connections.open`` plus a WebSocket that
sends envelopes and reads acks) drives the real ``slack_sdk`` Socket Mode client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from bot.runtime import load_settings, open_runtime
from bot.slack.app import build_slack_app, slack_web_client
from bot.slack.socket_mode import start_socket_mode
from tests.fakes.slack_api import FakeSlackAPI
from tests.fixtures_redis import unlink_prefix
from tests.fixtures_sandbox import SandboxHandle


@dataclass
class SocketSlack:
    """``apps.connections.open`` and the WebSocket it names; other Web API calls go to ``api``."""

    api: FakeSlackAPI
    url: str = ""
    connections: int = 0
    acks: list[dict[str, Any]] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)

    async def open_connection(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "url": self.url.replace("http", "ws") + "/link"})

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        # Everything but apps.connections.open is the fake Web API's business.
        import httpx

        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{self.api.url}{request.match_info['method']}",
                                       content=await request.read(), headers=dict(request.headers))
        return web.Response(body=answer.content, status=answer.status_code,
                            content_type="application/json")

    async def link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        self.sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": 1, "debug_info": {}})
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                self.acks.append(json.loads(message.data))
        return ws


@pytest.fixture
async def socket_slack() -> AsyncIterator[SocketSlack]:
    with FakeSlackAPI() as api:
        fake = SocketSlack(api)
        app = web.Application()
        app.router.add_post("/api/apps.connections.open", fake.open_connection)
        app.router.add_post("/api/{method}", fake.proxy)
        app.router.add_get("/link", fake.link)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fake.url = f"http://127.0.0.1:{port}"
        try:
            yield fake
        finally:
            for ws in fake.sockets:
                await ws.close()
            await runner.cleanup()


async def until(check: Any, what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"{what} did not happen within {within} s")


async def test_socket_mode_answers_a_command_and_counts_reconnects(
    socket_slack: SocketSlack, sandbox: SandboxHandle, redis_url: str, key_prefix: str
) -> None:
    settings = load_settings(
        STRIPE_API_KEY=sandbox.api_key, STRIPE_API_BASE=sandbox.url, REDIS_URL=redis_url,
        BILLING_KEY_PREFIX=key_prefix, STRIPE_ACCOUNT_ID="acct_socket", SLACK_BOT_TOKEN="xoxb-socket",
        SLACK_APP_TOKEN="xapp-1-socket", SLACK_API_URL=f"{socket_slack.url}/api/",
    )
    try:
        async with open_runtime(settings) as runtime:
            app = build_slack_app(runtime, client=slack_web_client(settings), socket_mode=True)
            handler, status = await start_socket_mode(app, settings)
            try:
                await until(lambda: status.connected, "the first connection")
                ws = socket_slack.sockets[-1]
                await ws.send_json({
                    "envelope_id": "env-1", "type": "slash_commands", "accepts_response_payload": True,
                    "payload": {"command": "/billing", "text": "help", "user_id": "U0MEMBER",
                                "team_id": "T0001", "channel_id": "C0GENERAL",
                                "response_url": socket_slack.api.response_url("sock")},
                })
                await until(lambda: any(a.get("envelope_id") == "env-1" for a in socket_slack.acks),
                            "the command's ack over the socket")
                ack = next(a for a in socket_slack.acks if a.get("envelope_id") == "env-1")
                assert "/billing" in json.dumps(ack.get("payload"))

                await ws.close()  # Slack drops the connection: the client must come back
                await until(lambda: socket_slack.connections >= 2 and status.connected, "a reconnection")
                assert status.to_dict()["reconnects"] >= 1
            finally:
                await handler.close_async()  # type: ignore[no-untyped-call]
    finally:
        await unlink_prefix(redis_url, key_prefix)


def test_socket_mode_needs_an_app_token() -> None:
    from billing.errors import ConfigurationError
    from bot.slack.credentials import app_token

    with pytest.raises(ConfigurationError, match="SLACK_APP_TOKEN"):
        app_token(load_settings(SLACK_BOT_TOKEN="xoxb-1"))
    with pytest.raises(ConfigurationError, match="xapp-"):
        app_token(load_settings(SLACK_APP_TOKEN="xoxb-wrong-kind"))
