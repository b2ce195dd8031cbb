"""Who may see billing data in Slack, and who may run admin subcommands.

``BILLING_ALLOWED`` lists user ids (``U…``/``W…``), user-group ids (``S…``) and channel ids
(``C…``/``G…``/``D…``); empty means every full member of the installing workspace. Guests
(``is_restricted``, ``is_ultra_restricted``), deleted users, bots and members of another workspace are
always refused. Admins are workspace admins and owners, plus ``BILLING_ADMINS`` (user or group ids).

What Slack says about a user is cached in Redis for five minutes (only the flags that decide access,
never the profile), so a busy channel does not spend the Web API's rate limit on ``users.info``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from billing.cache.connections import REDIS_ERRORS
from billing.cache.store import Namespace

log = logging.getLogger("billing.slack.access")

CACHE_SECONDS = 300


def slack_error(err: SlackApiError) -> str:
    """Slack's error code (``not_in_channel``…), or the HTTP status when the answer was not JSON."""
    data = err.response.data
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return f"HTTP {err.response.status_code}"


@dataclass(frozen=True)
class Member:
    """The access-relevant facts ``users.info`` gives about one user."""

    id: str
    team_id: str | None
    is_admin: bool = False
    is_owner: bool = False
    is_restricted: bool = False
    is_ultra_restricted: bool = False
    deleted: bool = False
    is_bot: bool = False

    @classmethod
    def from_user(cls, user: dict[str, Any]) -> Member:
        return cls(
            id=str(user.get("id", "")),
            team_id=user.get("team_id"),
            is_admin=bool(user.get("is_admin")),
            is_owner=bool(user.get("is_owner") or user.get("is_primary_owner")),
            is_restricted=bool(user.get("is_restricted")),
            is_ultra_restricted=bool(user.get("is_ultra_restricted")),
            deleted=bool(user.get("deleted")),
            is_bot=bool(user.get("is_bot")) or user.get("id") == "USLACKBOT",
        )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    is_admin: bool = False


def parse_ids(text: str) -> frozenset[str]:
    """``"U1, S2 ,C3"`` → ``{"U1", "S2", "C3"}``."""
    return frozenset(part.strip() for part in text.split(",") if part.strip())


REFUSED_GUEST = "Billing Lens is not available to guests of this workspace."
REFUSED_OTHER_TEAM = "Billing Lens shows billing data only to members of the workspace that installed it."
REFUSED_NOT_ALLOWED = (
    "You are not on the list of people allowed to see billing data (BILLING_ALLOWED); ask a workspace admin."
)
REFUSED_UNKNOWN = (
    "Slack could not confirm who you are just now, so no billing data is shown; try again shortly."
)
REFUSED_ADMIN = "Only workspace admins (or people in BILLING_ADMINS) can do that."


class AccessPolicy:
    """Decides per request; ``namespace`` caches ``users.info`` and group members (None: no cache)."""

    def __init__(
        self,
        client: AsyncWebClient,
        namespace: Namespace | None,
        *,
        allowed: Iterable[str] = (),
        admins: Iterable[str] = (),
        timeout: float = 1.5,
    ) -> None:
        # Checked before every ack: a slow Slack answer must leave room inside Slack's 3 s.
        self._timeout = timeout
        self._client = client
        self._ns = namespace
        self._allowed = frozenset(allowed)
        self._admins = frozenset(admins)

    async def check(self, user_id: str, *, team_id: str | None, channel_id: str | None = None,
                    admin: bool = False) -> Decision:
        """May ``user_id`` see billing data here (and, with ``admin``, run admin subcommands)?

        ``team_id`` is the workspace that installed the app: a member of another one is refused.
        """
        member = await self.member(user_id)
        if member is None:
            return Decision(False, REFUSED_UNKNOWN)
        if member.deleted or member.is_bot:
            return Decision(False, "Billing Lens answers people, not bots or deactivated accounts.")
        if member.is_restricted or member.is_ultra_restricted:
            return Decision(False, REFUSED_GUEST)
        if team_id and member.team_id and member.team_id != team_id:
            return Decision(False, REFUSED_OTHER_TEAM)
        is_admin = member.is_admin or member.is_owner or await self._in(user_id, self._admins)
        if self._allowed and not (
            (channel_id is not None and channel_id in self._allowed) or await self._in(user_id, self._allowed)
        ):
            return Decision(False, REFUSED_NOT_ALLOWED)
        if admin and not is_admin:
            return Decision(False, REFUSED_ADMIN, is_admin=False)
        return Decision(True, is_admin=is_admin)

    async def member(self, user_id: str) -> Member | None:
        """The user's flags (cached five minutes), or None when Slack cannot say."""
        key = self._ns.key("member", user_id) if self._ns is not None else None
        cached = await self._cache_get(key)
        if cached is not None:
            return Member(**json.loads(cached))
        try:
            response = await asyncio.wait_for(self._client.users_info(user=user_id), self._timeout)
        except SlackApiError as err:
            log.warning("users.info for %s failed: %s", user_id, slack_error(err))
            return None
        except (SlackClientError, OSError, TimeoutError) as err:
            log.warning("users.info for %s failed: %s", user_id, type(err).__name__)
            return None
        user = response.get("user")
        if not isinstance(user, dict):
            return None
        member = Member.from_user(user)
        await self._cache_set(key, json.dumps(member.__dict__))
        return member

    async def _in(self, user_id: str, ids: frozenset[str]) -> bool:
        if user_id in ids:
            return True
        for group in sorted(i for i in ids if i.startswith("S")):
            if user_id in await self._group_members(group):
                return True
        return False

    async def _group_members(self, group_id: str) -> frozenset[str]:
        key = self._ns.key("group", group_id) if self._ns is not None else None
        cached = await self._cache_get(key)
        if cached is not None:
            return frozenset(json.loads(cached))
        try:
            response = await asyncio.wait_for(
                self._client.usergroups_users_list(usergroup=group_id), self._timeout
            )
        except (SlackApiError, SlackClientError, OSError, TimeoutError) as err:
            log.warning("usergroups.users.list for %s failed: %s", group_id, type(err).__name__)
            return frozenset()  # fail closed: nobody is let in through a group Slack cannot list
        users = [str(u) for u in response.get("users") or []]
        await self._cache_set(key, json.dumps(users))
        return frozenset(users)

    async def _cache_get(self, key: str | None) -> str | None:
        if key is None or self._ns is None:
            return None
        try:
            return await self._ns.get(key)
        except REDIS_ERRORS:
            return None  # no cache: ask Slack

    async def _cache_set(self, key: str | None, value: str) -> None:
        if key is None or self._ns is None:
            return
        with contextlib.suppress(*REDIS_ERRORS):
            await self._ns.set(key, value, ex=CACHE_SECONDS)
