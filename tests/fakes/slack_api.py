"""A fake Slack Web API served over real HTTP on loopback, for tests.

``FakeSlackAPI`` runs an ``aiohttp.web`` server on ``127.0.0.1`` (free port) in a background thread::

    with FakeSlackAPI() as fake:
        client = AsyncWebClient(token="xoxb-test", base_url=fake.url)   # fake.url ends in /api/
        await client.users_info(user=USER_ADMIN)
        fake.wait_for("users.info")                  # or: await fake.wait_for_async("users.info")

Every request is recorded (``calls()``, ``responses()``) and answered like Slack
(``{"ok": true, ...}`` / ``{"ok": false, "error": "..."}``). Faults are injected per method with
``fail_next()`` and ``set_down()``. State (members, user groups, channels, messages, home views) is
kept in memory and guarded by one lock, so tests may read it from any thread.

Waiting: ``wait_for`` blocks the calling thread. When the call under test is made by a coroutine of the
test's own event loop (a bolt listener, a lazy task), use ``await fake.wait_for_async(...)``: blocking
that loop would stop the very call being waited for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl, quote

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

TEAM_ID = "T0001"
TEAM_NAME = "Acme Support"
TEAM_DOMAIN = "acme-support"
TEAM_URL = "https://acme-support.slack.com/"
OTHER_TEAM_ID = "T0OTHER"
BOT_USER_ID = "UBOT"
BOT_ID = "B0001"
BOT_NAME = "billing-lens"
APP_ID = "A0001"

# The default member directory (see FakeSlackAPI.add_user to add more).
USER_MEMBER = "U0MEMBER"
USER_ADMIN = "U0ADMIN"
USER_OWNER = "U0OWNER"
USER_GUEST = "U0GUEST"
USER_SINGLE_CHANNEL_GUEST = "U0SCGUEST"
USER_DELETED = "U0DELETED"
USER_BOT = "U0BOTUSER"
USER_STRANGER = "U0STRANGER"
USER_NO_EMAIL = "U0NOEMAIL"
USER_STRANGER_NO_EMAIL = "U0HIDDEN"

CHANNEL_GENERAL = "C0GENERAL"
CHANNEL_ALERTS = "C0ALERTS"

RESPONSE_URL_METHOD = "response_url"
"""The ``method`` of a recorded ``response_url`` post, and the key ``fail_next`` takes for them."""

FAULT_KINDS = ("rate_limited", "server_error", "accept_then_drop", "hang")

IMPLEMENTED_METHODS = (
    "auth.test",
    "users.info",
    "usergroups.users.list",
    "chat.postMessage",
    "chat.postEphemeral",
    "chat.update",
    "chat.getPermalink",
    "views.publish",
    "conversations.history",
    "conversations.replies",
)

_JSON_VALUED_PARAMS = frozenset({"blocks", "attachments", "metadata", "view"})
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_US_PER_S = 1_000_000
_T = TypeVar("_T")
_TS_STEP_US = 100


@dataclass(frozen=True)
class RecordedCall:
    """One request to ``/api/<method>`` (or, with ``method == "response_url"``, to a response URL).

    ``params`` merges the query string and the form or JSON body; JSON-valued form fields
    (``blocks``, ``attachments``, ``metadata``, ``view``) are decoded. ``headers`` is case-insensitive.
    ``fault`` names the injected fault that answered it (``"rate_limited"``, ``"server_error"``,
    ``"accept_then_drop"``, ``"hang"``, ``"down"``), or is None for a normal answer.
    """

    method: str
    params: dict[str, Any]
    headers: Mapping[str, str]
    body: bytes
    http_method: str
    fault: str | None
    received_at: float = field(default_factory=time.time)

    @property
    def token(self) -> str | None:
        """The token sent as ``Authorization: Bearer …`` or as a ``token`` parameter."""
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        value = self.params.get("token")
        return str(value) if value else None


@dataclass(frozen=True)
class RecordedResponse:
    """One POST to a ``response_url`` made by ``fake.response_url(name)``."""

    name: str
    payload: dict[str, Any]
    headers: Mapping[str, str]
    body: bytes
    fault: str | None
    received_at: float = field(default_factory=time.time)


@dataclass
class _Fault:
    kind: str
    hang_seconds: float


CallMatcher = str | Callable[[RecordedCall], bool]
ResponseMatcher = str | None | Callable[[RecordedResponse], bool]


class FakeSlackAPI:
    """A fake Slack Web API on ``http://127.0.0.1:<port>/api/``, run in a background thread.

    Use it as a context manager (or ``start()`` / ``stop()``). ``clock`` gives the seconds from which
    message ``ts`` values are made (strictly increasing, 100 µs apart at least); pass
    ``clock=lambda: 1700000000.0`` for fixed values. ``valid_tokens``: when given, any other token
    gets ``invalid_auth``; by default every non-empty token is accepted.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.time,
        valid_tokens: Iterable[str] | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._valid_tokens = set(valid_tokens) if valid_tokens is not None else None
        self._revoked_tokens: set[str] = set()
        self._calls: list[RecordedCall] = []
        self._responses: list[RecordedResponse] = []
        self._faults: dict[str, deque[_Fault]] = {}
        self._down = False
        self._users: dict[str, dict[str, Any]] = {}
        self._usergroups: dict[str, list[str]] = {}
        self._channel_names: dict[str, str] = {}
        self._bot_channels: set[str] | None = None
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._home_views: dict[str, dict[str, Any]] = {}
        self._view_seq = 0
        self._last_ts_us = 0
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._install_defaults()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Bind a port, start serving in a background thread, and return once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeSlackAPI is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._requested_port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._port = sock.getsockname()[1]
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(target=self._run, name=f"fake-slack-api-{self._port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10.0):
            self.stop()
            raise RuntimeError("FakeSlackAPI did not start within 10 s")
        if self._startup_error is not None:
            error = self._startup_error
            self.stop()
            raise RuntimeError("FakeSlackAPI failed to start") from error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, end the thread, and release the port (idempotent)."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"FakeSlackAPI thread did not stop within {timeout} s")
        if self._sock is not None:
            self._sock.close()
        self._thread = self._loop = self._stopping = self._sock = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeSlackAPI is not started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """The Web API base URL, ``http://127.0.0.1:<port>/api/``: pass it as ``base_url``."""
        return f"{self.root_url}/api/"

    def response_url(self, name: str) -> str:
        """A loopback ``response_url``; POSTs to it are recorded under ``name``."""
        return f"{self.root_url}/response/{quote(name, safe='')}"

    # ------------------------------------------------------------------ directory and state setup

    def add_user(
        self,
        user_id: str,
        *,
        email: str | None = None,
        team_id: str = TEAM_ID,
        name: str | None = None,
        real_name: str | None = None,
        profile: Mapping[str, Any] | None = None,
        **flags: Any,
    ) -> dict[str, Any]:
        """Add (or replace) a member answered by ``users.info``; returns a copy of the user object.

        ``email=None`` leaves ``profile.email`` out. ``flags`` set top-level fields such as
        ``is_admin=True``, ``is_owner=True``, ``is_restricted=True``, ``is_ultra_restricted=True``,
        ``deleted=True``, ``is_bot=True``, ``is_stranger=True``; ``profile`` adds profile fields.
        """
        login = name or user_id.lower()
        display = real_name or login
        user_profile: dict[str, Any] = {
            "real_name": display,
            "display_name": login,
            "team": team_id,
        }
        if email is not None:
            user_profile["email"] = email
        user_profile.update(profile or {})
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": team_id,
            "name": login,
            "real_name": display,
            "deleted": False,
            "tz": "Europe/Paris",
            "is_admin": False,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": False,
            "is_app_user": False,
            "updated": 1700000000,
            "profile": user_profile,
        }
        user.update(flags)
        with self._lock:
            self._users[user_id] = user
            return copy.deepcopy(user)

    def set_usergroup(self, usergroup_id: str, user_ids: Iterable[str]) -> None:
        """Define the members answered by ``usergroups.users.list`` for ``usergroup_id``."""
        with self._lock:
            self._usergroups[usergroup_id] = list(user_ids)

    def add_channel(self, channel_id: str, name: str) -> None:
        """Name a channel, so ``chat.postMessage`` accepts ``#name`` / ``name`` for it."""
        with self._lock:
            self._channel_names[name.lstrip("#")] = channel_id

    def set_bot_channels(self, channel_ids: Iterable[str] | None) -> None:
        """Channels the bot is a member of; others answer ``not_in_channel``. None (default): all."""
        with self._lock:
            self._bot_channels = set(channel_ids) if channel_ids is not None else None

    def revoke_token(self, token: str) -> None:
        """Later calls with ``token`` answer ``token_revoked``."""
        with self._lock:
            self._revoked_tokens.add(token)

    def add_message(
        self,
        channel: str,
        *,
        text: str = "",
        ts: str | None = None,
        user: str = BOT_USER_ID,
        thread_ts: str | None = None,
        blocks: list[dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
        bot_id: str | None = BOT_ID,
    ) -> str:
        """Seed a message in a channel (as if posted earlier, e.g. before a crash); returns its ts."""
        with self._lock:
            message_ts = ts if ts is not None else self._next_ts()
            message: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": message_ts}
            if bot_id is not None:
                message["bot_id"] = bot_id
            if thread_ts is not None:
                message["thread_ts"] = thread_ts
            if blocks is not None:
                message["blocks"] = copy.deepcopy(blocks)
            if metadata is not None:
                message["metadata"] = copy.deepcopy(metadata)
            self._store_message(channel, message)
            self._changed.notify_all()
            return message_ts

    # ------------------------------------------------------------------ fault injection

    def fail_next(self, method: str, kind: str, times: int = 1, *, hang_seconds: float = 30.0) -> None:
        """The next ``times`` calls of ``method`` fail with ``kind`` (queued after earlier faults).

        Kinds: ``"rate_limited"`` (429, ``Retry-After: 1``, ``ratelimited``), ``"server_error"`` (500),
        ``"accept_then_drop"`` (applied and recorded, then the connection closes without an answer),
        ``"hang"`` (no answer for ``hang_seconds``; then applied and answered normally, unless the fake
        stops first). ``method`` is a Web API method or ``"response_url"`` (any response URL).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if method not in IMPLEMENTED_METHODS and method != RESPONSE_URL_METHOD:
            raise ValueError(f"the fake does not implement {method!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            queue = self._faults.setdefault(method, deque())
            queue.extend(_Fault(kind, hang_seconds) for _ in range(times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_down(self, down: bool) -> None:
        """While down, every method and response URL answers HTTP 503 (the call is still recorded)."""
        with self._lock:
            self._down = down

    # ------------------------------------------------------------------ inspection

    def calls(self, method: str | None = None) -> list[RecordedCall]:
        """Recorded Web API calls in arrival order, optionally only those of ``method``."""
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_for(
        self, predicate_or_method: CallMatcher, count: int = 1, timeout: float = 10.0
    ) -> list[RecordedCall]:
        """Block until at least ``count`` recorded calls match, and return all that match.

        Raises ``AssertionError`` at the deadline. Do not call it from the event loop that makes the
        awaited call: use ``wait_for_async`` there.
        """
        match = _call_matcher(predicate_or_method)
        found = self._wait_blocking(lambda: [c for c in self._calls if match(c)], count, timeout)
        if found is None:
            missing = [c for c in self.calls() if match(c)]
            raise AssertionError(self._timeout_message(predicate_or_method, count, timeout, missing))
        return found

    async def wait_for_async(
        self,
        predicate_or_method: CallMatcher,
        count: int = 1,
        timeout: float = 10.0,  # noqa: ASYNC109 - same signature as wait_for
    ) -> list[RecordedCall]:
        """``wait_for`` for coroutines: polls without blocking the running event loop."""
        match = _call_matcher(predicate_or_method)
        return await _poll_async(
            lambda: [c for c in self.calls() if match(c)],
            count,
            timeout,
            lambda found: self._timeout_message(predicate_or_method, count, timeout, found),
        )

    def responses(self, name: str | None = None) -> list[RecordedResponse]:
        """Recorded ``response_url`` posts in arrival order, optionally only those to ``name``."""
        with self._lock:
            return [r for r in self._responses if name is None or r.name == name]

    def wait_for_response(
        self, name_or_predicate: ResponseMatcher = None, count: int = 1, timeout: float = 10.0
    ) -> list[RecordedResponse]:
        """Block until at least ``count`` response-URL posts match (a name, a predicate, or None: any)."""
        match = _response_matcher(name_or_predicate)
        found = self._wait_blocking(lambda: [r for r in self._responses if match(r)], count, timeout)
        if found is None:
            raise AssertionError(self._response_timeout_message(name_or_predicate, count, timeout))
        return found

    async def wait_for_response_async(
        self,
        name_or_predicate: ResponseMatcher = None,
        count: int = 1,
        timeout: float = 10.0,  # noqa: ASYNC109 - same signature as wait_for_response
    ) -> list[RecordedResponse]:
        """``wait_for_response`` for coroutines: polls without blocking the running event loop."""
        match = _response_matcher(name_or_predicate)
        return await _poll_async(
            lambda: [r for r in self.responses() if match(r)],
            count,
            timeout,
            lambda _found: self._response_timeout_message(name_or_predicate, count, timeout),
        )

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Copies of stored messages (top-level and replies), oldest first, each with its ``channel``."""
        with self._lock:
            channels = [channel] if channel is not None else list(self._messages)
            out = []
            for channel_id in channels:
                for message in self._messages.get(channel_id, []):
                    out.append({**copy.deepcopy(message), "channel": channel_id})
            out.sort(key=lambda m: _ts_us(m["ts"]))
            return out

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[dict[str, Any]]:
        """Copies of ``chat.postEphemeral`` messages (``channel``, ``user``, ``text``, ``blocks``, …)."""
        with self._lock:
            return [
                copy.deepcopy(e)
                for e in self._ephemerals
                if (channel is None or e["channel"] == channel) and (user is None or e["user"] == user)
            ]

    def home_view(self, user_id: str) -> dict[str, Any] | None:
        """The view last published to ``user_id``'s App Home, or None."""
        with self._lock:
            view = self._home_views.get(user_id)
            return copy.deepcopy(view) if view is not None else None

    def _wait_blocking(self, collect: Callable[[], list[_T]], count: int, timeout: float) -> list[_T] | None:
        """Re-run ``collect`` (under the lock) on every change until it finds ``count`` items or the
        deadline passes (then None). The lock is released while waiting."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = collect()
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 0.05))

    # ------------------------------------------------------------------ server

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported to start() when it happens before ready
            self._startup_error = error
            self._ready.set()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _serve(self) -> None:
        assert self._sock is not None
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_route("POST", "/response/{name}", self._handle_response_url)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.SockSite(runner, self._sock).start()
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        body = await request.read()
        params = _parse_params(request, body)
        headers: Mapping[str, str] = CIMultiDictProxy(CIMultiDict(request.headers))
        with self._lock:
            fault = self._take_fault(method)
            if fault is None or fault.kind == "accept_then_drop":
                payload = self._dispatch(method, params, headers)
            else:
                payload = {}
            self._record_call(method, params, headers, body, request.method, fault)
        return await self._answer(request, fault, payload, lambda: self._dispatch(method, params, headers))

    async def _handle_response_url(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = await request.read()
        params = _parse_params(request, body)
        headers: Mapping[str, str] = CIMultiDictProxy(CIMultiDict(request.headers))
        with self._lock:
            fault = self._take_fault(RESPONSE_URL_METHOD)
            self._responses.append(
                RecordedResponse(name, params, headers, body, fault.kind if fault is not None else None)
            )
            self._changed.notify_all()
        return await self._answer(request, fault, {"ok": True}, lambda: {"ok": True})

    async def _answer(
        self,
        request: web.Request,
        fault: _Fault | None,
        payload: dict[str, Any],
        apply_late: Callable[[], dict[str, Any]],
    ) -> web.StreamResponse:
        if fault is None:
            return web.json_response(payload)
        if fault.kind == "down":
            return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        if fault.kind == "rate_limited":
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"}
            )
        if fault.kind == "server_error":
            return web.json_response({"ok": False, "error": "internal_error"}, status=500)
        if fault.kind == "accept_then_drop":
            return self._drop(request)
        # hang: no answer until the delay ends (or the fake stops, then the connection just closes)
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=fault.hang_seconds)
        except TimeoutError:
            with self._lock:
                late_payload = apply_late()
                self._changed.notify_all()
            return web.json_response(late_payload)
        return self._drop(request)

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=204)  # never reaches the client: the transport is closed

    # ------------------------------------------------------------------ state helpers (lock held)

    def _take_fault(self, method: str) -> _Fault | None:
        if self._down:
            return _Fault("down", 0.0)
        queue = self._faults.get(method)
        if queue:
            return queue.popleft()
        return None

    def _record_call(
        self,
        method: str,
        params: dict[str, Any],
        headers: Mapping[str, str],
        body: bytes,
        http_method: str,
        fault: _Fault | None,
    ) -> None:
        self._calls.append(
            RecordedCall(
                method, params, headers, body, http_method, fault.kind if fault is not None else None
            )
        )
        self._changed.notify_all()

    def _next_ts(self) -> str:
        now_us = int(Decimal(repr(self._clock())) * _US_PER_S) // _TS_STEP_US * _TS_STEP_US
        self._last_ts_us = max(now_us, self._last_ts_us + _TS_STEP_US)
        seconds, micros = divmod(self._last_ts_us, _US_PER_S)
        return f"{seconds}.{micros:06d}"

    def _store_message(self, channel: str, message: dict[str, Any]) -> None:
        stored = self._messages.setdefault(channel, [])
        stored.append(message)
        stored.sort(key=lambda m: _ts_us(m["ts"]))
        parent_ts = message.get("thread_ts")
        if parent_ts is not None and parent_ts != message["ts"]:
            parent = _find(stored, parent_ts)
            if parent is not None:
                parent["thread_ts"] = parent_ts
                parent["reply_count"] = parent.get("reply_count", 0) + 1
                users = parent.setdefault("reply_users", [])
                if message.get("user") not in users:
                    users.append(message.get("user"))
                parent["latest_reply"] = max(
                    parent.get("latest_reply", message["ts"]), message["ts"], key=_ts_us
                )

    def _resolve_channel(self, channel: Any, *, allow_names: bool) -> str | None:
        if not isinstance(channel, str) or not channel:
            return None
        if _CHANNEL_ID.match(channel):
            return channel
        if allow_names and _USER_ID.match(channel):
            return "D" + channel[1:]  # a DM with the user, as Slack opens one
        if allow_names:
            return self._channel_names.get(channel.lstrip("#"))
        return None

    def _channel_error(self, channel: Any, *, allow_names: bool) -> tuple[str | None, dict[str, Any] | None]:
        channel_id = self._resolve_channel(channel, allow_names=allow_names)
        if channel_id is None:
            return None, _error("channel_not_found")
        if self._bot_channels is not None and channel_id not in self._bot_channels:
            return None, _error("not_in_channel")
        return channel_id, None

    # ------------------------------------------------------------------ Web API methods (lock held)

    def _dispatch(self, method: str, params: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        handler = self._methods().get(method)
        if handler is None:
            return _error("unknown_method")
        auth_error = self._check_auth(params, headers)
        if auth_error is not None:
            return auth_error
        return handler(params)

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "auth.test": self._auth_test,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "chat.getPermalink": self._chat_get_permalink,
            "views.publish": self._views_publish,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
        }

    def _check_auth(self, params: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any] | None:
        auth = headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else str(params.get("token") or "")
        if not token:
            return _error("not_authed")
        if token in self._revoked_tokens:
            return _error("token_revoked")
        if self._valid_tokens is not None and token not in self._valid_tokens:
            return _error("invalid_auth")
        return None

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": TEAM_URL,
            "team": TEAM_NAME,
            "user": BOT_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._users.get(str(params.get("user", "")))
        if user is None:
            return _error("user_not_found")
        return {"ok": True, "user": copy.deepcopy(user)}

    def _usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        members = self._usergroups.get(str(params.get("usergroup", "")))
        if members is None:
            return _error("no_such_subteam")
        return {"ok": True, "users": list(members)}

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel_id, error = self._channel_error(params.get("channel"), allow_names=True)
        if error is not None:
            return error
        assert channel_id is not None
        if not any(params.get(k) for k in ("text", "blocks", "attachments")):
            return _error("no_text")
        message: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "team": TEAM_ID,
            "text": params.get("text", ""),
            "ts": self._next_ts(),
        }
        for key in ("blocks", "attachments", "metadata"):
            if params.get(key) is not None:
                message[key] = copy.deepcopy(params[key])
        thread_ts = params.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = str(thread_ts)
            if _truthy(params.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
        self._store_message(channel_id, message)
        answer = {k: v for k, v in message.items() if k != "metadata"}
        return {"ok": True, "channel": channel_id, "ts": message["ts"], "message": copy.deepcopy(answer)}

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel_id, error = self._channel_error(params.get("channel"), allow_names=True)
        if error is not None:
            return error
        if not params.get("user"):
            return _error("user_not_found")
        if not any(params.get(k) for k in ("text", "blocks", "attachments")):
            return _error("no_text")
        message_ts = self._next_ts()
        self._ephemerals.append(
            {
                "channel": channel_id,
                "user": params["user"],
                "text": params.get("text", ""),
                "blocks": copy.deepcopy(params.get("blocks")),
                "thread_ts": params.get("thread_ts"),
                "message_ts": message_ts,
            }
        )
        return {"ok": True, "message_ts": message_ts}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel_id, error = self._channel_error(params.get("channel"), allow_names=False)
        if error is not None:
            return error
        message = _find(self._messages.get(channel_id or "", []), str(params.get("ts", "")))
        if message is None:
            return _error("message_not_found")
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in params:
                message[key] = copy.deepcopy(params[key])
        message["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
        answer = {k: v for k, v in message.items() if k != "metadata"}
        return {
            "ok": True,
            "channel": channel_id,
            "ts": message["ts"],
            "text": message.get("text", ""),
            "message": copy.deepcopy(answer),
        }

    def _chat_get_permalink(self, params: dict[str, Any]) -> dict[str, Any]:
        channel_id, error = self._channel_error(params.get("channel"), allow_names=False)
        if error is not None:
            return error
        message = _find(self._messages.get(channel_id or "", []), str(params.get("message_ts", "")))
        if message is None:
            return _error("message_not_found")
        link = f"{TEAM_URL}archives/{channel_id}/p{message['ts'].replace('.', '')}"
        parent = message.get("thread_ts")
        if parent and parent != message["ts"]:
            link += f"?thread_ts={parent}&cid={channel_id}"
        return {"ok": True, "channel": channel_id, "permalink": link}

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = params.get("user_id")
        view = params.get("view")
        if not user_id or not isinstance(view, dict) or view.get("type") != "home":
            return _error("invalid_arguments")
        current = self._home_views.get(str(user_id))
        if params.get("hash") and current is not None and params["hash"] != current["hash"]:
            return _error("hash_conflict")
        self._view_seq += 1
        published = {
            **copy.deepcopy(view),
            "id": f"V{self._view_seq:08d}",
            "team_id": TEAM_ID,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
            "hash": f"{self._view_seq}.{user_id}",
        }
        self._home_views[str(user_id)] = published
        return {"ok": True, "view": copy.deepcopy(published)}

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel_id, error = self._channel_error(params.get("channel"), allow_names=False)
        if error is not None:
            return error
        top_level = [
            m
            for m in self._messages.get(channel_id or "", [])
            if m.get("thread_ts") in (None, m["ts"]) or m.get("subtype") == "thread_broadcast"
        ]
        selected = _in_window(top_level, params)
        selected.reverse()  # newest first
        return self._page(selected, params, "messages")

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel_id, error = self._channel_error(params.get("channel"), allow_names=False)
        if error is not None:
            return error
        stored = self._messages.get(channel_id or "", [])
        ts = str(params.get("ts", ""))
        head = _find(stored, ts)
        if head is None:
            return _error("thread_not_found")
        if head.get("thread_ts") not in (None, ts):
            thread = [head]  # the ts of a reply gives that reply alone
        else:
            thread = [m for m in stored if m["ts"] == ts or m.get("thread_ts") == ts]
        selected = [head, *[m for m in _in_window(thread, params) if m is not head]]
        return self._page(selected, params, "messages")

    def _page(self, items: list[dict[str, Any]], params: dict[str, Any], key: str) -> dict[str, Any]:
        start = _decode_cursor(params.get("cursor"))
        try:
            limit = max(1, min(999, int(params.get("limit") or 100)))
        except ValueError:
            limit = 100
        page = items[start : start + limit]
        has_more = start + limit < len(items)
        with_metadata = _truthy(params.get("include_all_metadata"))
        out = [
            copy.deepcopy(m if with_metadata else {k: v for k, v in m.items() if k != "metadata"})
            for m in page
        ]
        return {
            "ok": True,
            key: out,
            "has_more": has_more,
            "pin_count": 0,
            "response_metadata": {"next_cursor": _encode_cursor(start + limit) if has_more else ""},
        }

    # ------------------------------------------------------------------ defaults and messages

    def _install_defaults(self) -> None:
        self.add_user(BOT_USER_ID, name=BOT_NAME, is_bot=True, profile={"bot_id": BOT_ID})
        self.add_user(USER_MEMBER, email="member@acme-support.example", real_name="Mia Member")
        self.add_user(USER_ADMIN, email="admin@acme-support.example", real_name="Ada Admin", is_admin=True)
        self.add_user(
            USER_OWNER,
            email="owner@acme-support.example",
            real_name="Olga Owner",
            is_admin=True,
            is_owner=True,
            is_primary_owner=True,
        )
        self.add_user(USER_GUEST, email="guest@partner.example", real_name="Gus Guest", is_restricted=True)
        self.add_user(
            USER_SINGLE_CHANNEL_GUEST,
            email="single-guest@partner.example",
            real_name="Sina Single",
            is_restricted=True,
            is_ultra_restricted=True,
        )
        self.add_user(USER_DELETED, email="gone@acme-support.example", real_name="Dee Deleted", deleted=True)
        self.add_user(USER_BOT, email="helper-bot@acme-support.example", real_name="Helper Bot", is_bot=True)
        self.add_user(
            USER_STRANGER,
            email="sam@other-org.example",
            real_name="Sam Stranger",
            team_id=OTHER_TEAM_ID,
            is_stranger=True,
        )
        self.add_user(USER_NO_EMAIL, email=None, real_name="Nora Noemail")
        self.add_user(
            USER_STRANGER_NO_EMAIL,
            email=None,
            real_name="Hal Hidden",
            team_id=OTHER_TEAM_ID,
            is_stranger=True,
        )
        self.add_channel(CHANNEL_GENERAL, "general")
        self.add_channel(CHANNEL_ALERTS, "billing-alerts")

    def _timeout_message(
        self, what: CallMatcher, count: int, timeout: float, found: list[RecordedCall]
    ) -> str:
        seen = [f"{c.method}{f' ({c.fault})' if c.fault else ''}" for c in self.calls()]
        return (
            f"fake Slack: expected {count} call(s) matching {_describe(what)} within {timeout} s, "
            f"got {len(found)}; calls seen: {seen}. (A call made from the event loop running this wait "
            "needs `await fake.wait_for_async(...)`.)"
        )

    def _response_timeout_message(self, what: ResponseMatcher, count: int, timeout: float) -> str:
        seen = [r.name for r in self.responses()]
        return (
            f"fake Slack: expected {count} response_url post(s) matching {_describe(what)} within "
            f"{timeout} s; posts seen to: {seen}"
        )


# ---------------------------------------------------------------------- module helpers


def _error(code: str) -> dict[str, Any]:
    return {"ok": False, "error": code}


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def _ts_us(ts: Any) -> int:
    try:
        return int(Decimal(str(ts)) * _US_PER_S)
    except (InvalidOperation, ValueError):
        return 0


def _find(messages: list[dict[str, Any]], ts: str) -> dict[str, Any] | None:
    return next((m for m in messages if m["ts"] == ts), None)


def _in_window(messages: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages (oldest first) between ``oldest`` and ``latest``, exclusive unless ``inclusive``."""
    oldest = _ts_us(params["oldest"]) if params.get("oldest") not in (None, "") else None
    latest = _ts_us(params["latest"]) if params.get("latest") not in (None, "") else None
    inclusive = _truthy(params.get("inclusive"))

    def inside(message: dict[str, Any]) -> bool:
        ts = _ts_us(message["ts"])
        if oldest is not None and (ts < oldest or (ts == oldest and not inclusive)):
            return False
        return not (latest is not None and (ts > latest or (ts == latest and not inclusive)))

    return [m for m in messages if inside(m)]


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: Any) -> int:
    if not cursor:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(str(cursor).encode()).decode().split(":", 1)[1]))
    except (ValueError, IndexError):
        return 0


def _parse_params(request: web.Request, body: bytes) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    if body:
        if request.content_type == "application/json" or body.lstrip().startswith(b"{"):
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                params.update(decoded)
        elif request.content_type in ("application/x-www-form-urlencoded", "", "text/plain"):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    for key in _JSON_VALUED_PARAMS & params.keys():
        value = params[key]
        if isinstance(value, str) and value.strip().startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params


def _call_matcher(what: CallMatcher) -> Callable[[RecordedCall], bool]:
    if isinstance(what, str):
        return lambda call: call.method == what
    return what


def _response_matcher(what: ResponseMatcher) -> Callable[[RecordedResponse], bool]:
    if what is None:
        return lambda _response: True
    if isinstance(what, str):
        return lambda response: response.name == what
    return what


def _describe(what: Any) -> str:
    if what is None:
        return "anything"
    if isinstance(what, str):
        return repr(what)
    return getattr(what, "__name__", repr(what))


async def _poll_async(
    collect: Callable[[], list[_T]],
    count: int,
    timeout: float,  # noqa: ASYNC109 - a deadline checked between polls
    on_timeout: Callable[[list[_T]], str],
) -> list[_T]:
    deadline = time.monotonic() + timeout
    while True:
        found = collect()
        if len(found) >= count:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(on_timeout(found))
        await asyncio.sleep(0.01)


__all__ = [
    "BOT_ID",
    "BOT_USER_ID",
    "CHANNEL_ALERTS",
    "CHANNEL_GENERAL",
    "FAULT_KINDS",
    "IMPLEMENTED_METHODS",
    "OTHER_TEAM_ID",
    "RESPONSE_URL_METHOD",
    "TEAM_ID",
    "TEAM_NAME",
    "TEAM_URL",
    "USER_ADMIN",
    "USER_BOT",
    "USER_DELETED",
    "USER_GUEST",
    "USER_MEMBER",
    "USER_NO_EMAIL",
    "USER_OWNER",
    "USER_SINGLE_CHANNEL_GUEST",
    "USER_STRANGER",
    "USER_STRANGER_NO_EMAIL",
    "FakeSlackAPI",
    "RecordedCall",
    "RecordedResponse",
]
