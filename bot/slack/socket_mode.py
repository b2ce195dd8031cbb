"""``billing serve --socket-mode``: the same bolt app over Slack's Socket Mode (``SLACK_APP_TOKEN``).

Socket Mode has a history of silent disconnects: every (re)connection and close is logged and counted,
and ``/healthz`` shows the state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.socket_mode.aiohttp import SocketModeClient

from billing.config import Settings
from bot.slack.credentials import app_token

log = logging.getLogger("billing.slack.socket")


@dataclass(eq=False)
class SocketModeStatus:
    connects: int = 0
    closes: int = 0
    last_connect_at: float | None = None
    last_close_at: float | None = None
    client: SocketModeClient | None = None

    @property
    def connected(self) -> bool:
        # Read from the live session: slack_sdk runs close listeners after it has reconnected.
        client = self.client
        session = client.current_session if client is not None else None
        return bool(client is not None and not client.closed and session is not None and not session.closed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "socket",
            "connected": self.connected,
            "reconnects": max(0, self.connects - 1),
            "closes": self.closes,
            "last_connect_age_seconds": round(time.time() - self.last_connect_at, 1)
            if self.last_connect_at else None,
        }


class _TrackedClient(SocketModeClient):
    status: SocketModeStatus

    async def connect(self) -> None:
        await super().connect()  # type: ignore[no-untyped-call]
        self.status.connects += 1
        self.status.last_connect_at = time.time()
        if self.status.connects > 1:
            log.warning("Socket Mode reconnected (reconnect %d).", self.status.connects - 1)
        else:
            log.info("Socket Mode connected.")


async def start_socket_mode(
    app: AsyncApp, settings: Settings
) -> tuple[AsyncSocketModeHandler, SocketModeStatus]:
    """Connect the app over Socket Mode; returns the handler (``await handler.close_async()``) and status."""
    token = app_token(settings)
    status = SocketModeStatus()
    handler = AsyncSocketModeHandler(app, token)
    client = _TrackedClient(app_token=token, logger=handler.client.logger, web_client=app.client,
                            auto_reconnect_enabled=True)
    client.status = status
    status.client = client

    async def closed(_message: Any) -> None:
        status.closes += 1
        status.last_close_at = time.time()
        log.warning("Socket Mode connection closed by Slack; reconnecting.")

    client.on_close_listeners.append(closed)
    client.socket_mode_request_listeners.append(handler.handle)  # type: ignore[arg-type]
    handler.client = client
    await handler.connect_async()  # type: ignore[no-untyped-call]
    return handler, status
