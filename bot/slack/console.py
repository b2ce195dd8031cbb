"""Slack on the console, for the demo: the very Block Kit messages the app sends, drawn in the terminal.

``ConsoleSlack`` answers the few Web API methods the app calls (``auth.test``, ``users.info``,
``chat.postMessage``…) and the ``response_url`` posts, as Starlette routes mounted beside the real
ones, and prints each message through ``render_message`` (pure: a payload in, text out).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

DEMO_TEAM = "TDEMO"
_LINK = re.compile(r"<(https?://[^|>]+)\|([^>]+)>")
_MENTION = re.compile(r"<[@#!]([^|>]+)(?:\|[^>]*)?>")
_EMPHASIS = re.compile(r"[*`]([^*`\n]+)[*`]")


def _mrkdwn(text: str) -> str:
    """Slack mrkdwn as a terminal shows it: links as their label, entities decoded."""
    text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})", text)
    text = _MENTION.sub(lambda m: f"@{m.group(1)}", text)
    text = _EMPHASIS.sub(r"\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text_of(obj: Any) -> str:
    return _mrkdwn(str(obj.get("text", ""))) if isinstance(obj, dict) else ""


def render_message(payload: dict[str, Any]) -> str:
    """A message's blocks as plain lines (its fallback ``text`` when it has no blocks)."""
    blocks = payload.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    if not blocks:
        return _mrkdwn(str(payload.get("text", "")))
    lines: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            lines.append(_text_of(block.get("text")).upper())
        elif kind == "section":
            if block.get("text"):
                lines.append(_text_of(block["text"]))
            for field in block.get("fields") or []:
                lines.append("  " + _text_of(field).replace("\n", ": ", 1))
            accessory = block.get("accessory") or {}
            if accessory.get("type") == "static_select":
                lines.append(f"  [{_text_of(accessory.get('placeholder')) or 'choose'} ▾]")
        elif kind == "context":
            lines.append("  " + " · ".join(_text_of(e) for e in block.get("elements") or []))
        elif kind == "actions":
            buttons = [f"[ {_text_of(e.get('text'))} ]" for e in block.get("elements") or []]
            lines.append("  " + "  ".join(buttons))
        elif kind == "divider":
            lines.append("─" * 40)
    return "\n".join(line for line in lines if line.strip())


class ConsoleSlack:
    """The Web API and ``response_url`` stand-in; ``show(title, text)`` is how a message is shown."""

    def __init__(self, show: Callable[[str, str], None], *, prefix: str = "/console-slack") -> None:
        self._show = show
        self.prefix = prefix
        self.posted: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self._ts = itertools.count(1)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{self.prefix}/api/{{method}}", self._api, methods=["GET", "POST"]),
            Route(f"{self.prefix}/response/{{name}}", self._response, methods=["POST"]),
        ]

    def api_url(self, base: str) -> str:
        return f"{base}{self.prefix}/api/"

    def response_url(self, base: str, name: str) -> str:
        return f"{base}{self.prefix}/response/{name}"

    async def _params(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        params: dict[str, Any] = dict(request.query_params)
        if request.headers.get("content-type", "").startswith("application/json"):
            params.update(json.loads(body or b"{}"))
        else:
            params.update(parse_qsl(body.decode()))
        return params

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        params = await self._params(request)
        if method == "auth.test":
            return JSONResponse({"ok": True, "team_id": DEMO_TEAM, "user_id": "UDEMOBOT", "bot_id": "BDEMO"})
        if method == "users.info":
            user = str(params.get("user", ""))
            return JSONResponse({"ok": True, "user": {
                "id": user, "team_id": DEMO_TEAM, "is_admin": True, "deleted": False, "is_bot": False,
                "profile": {"email": "jane@acme.com" if user == "UJANE" else "agent@example.com"}}})
        if method == "chat.postMessage":
            ts = f"{int(time.time())}.{next(self._ts):06d}"
            self.posted.append({**params, "ts": ts})
            where = f"#{params.get('channel')}" + (" · thread reply" if params.get("thread_ts") else "")
            self._show(f"Slack · {where}", render_message(params))
            return JSONResponse({"ok": True, "channel": params.get("channel"), "ts": ts})
        if method in {"conversations.history", "conversations.replies"}:
            return JSONResponse({"ok": True, "messages": [], "has_more": False})
        if method == "views.publish":
            return JSONResponse({"ok": True})
        return JSONResponse({"ok": True})

    async def _response(self, request: Request) -> Response:
        params = await self._params(request)
        self.responses.append(params)
        self._show("Slack · only visible to you", render_message(params))
        return Response("ok")
