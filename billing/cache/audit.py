"""The audit trail: who looked up which customer, from which surface, with what outcome.

One Redis stream per tenant, trimmed to a bounded length (``MAXLEN ~``), so it never grows without
bound. Every surface (Slack command, shortcut, buttons, App Home, LLM tool, CLI) records through the
same ``AuditLog``; ``billing audit`` reads it back newest first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from billing.cache.connections import RedisClient

Surface = Literal["slack_command", "slack_shortcut", "slack_button", "slack_home", "tool", "cli"]
Outcome = Literal["found", "not_found", "refused", "bad_query", "unavailable"]

DEFAULT_MAX_ENTRIES = 100_000
_READ_PAGE = 500


@dataclass(frozen=True)
class AuditEntry:
    """One lookup. ``user`` is a Slack user id, ``tool`` or the CLI's OS user."""

    at: float
    user: str
    surface: str
    query: str
    outcome: str
    customer_id: str | None = None
    team: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return data

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> AuditEntry:
        text = {_s(k): _s(v) for k, v in fields.items()}
        return cls(
            at=float(text.get("at") or 0), user=text.get("user", ""), surface=text.get("surface", ""),
            query=text.get("query", ""), outcome=text.get("outcome", ""),
            customer_id=text.get("customer_id") or None, team=text.get("team") or None,
        )


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# A query is user text: bounded so one hostile request cannot bloat every entry.
MAX_QUERY_CHARS = 320


class AuditLog:
    """Append-only, bounded audit stream at ``key``."""

    def __init__(self, client: RedisClient, key: str, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._client = client
        self.key = key
        self._max_entries = max_entries

    async def record(
        self, *, user: str, surface: Surface, query: str, outcome: Outcome,
        customer_id: str | None = None, team: str | None = None, at: float | None = None,
    ) -> None:
        fields = {
            "at": repr(at if at is not None else time.time()), "user": user[:64], "surface": surface,
            "query": query[:MAX_QUERY_CHARS], "outcome": outcome, "customer_id": customer_id or "",
            "team": team or "",
        }
        await self._client.xadd(self.key, fields, maxlen=self._max_entries, approximate=True)  # type: ignore[arg-type]

    async def read(
        self, *, user: str | None = None, customer_id: str | None = None, limit: int = 50,
    ) -> list[AuditEntry]:
        """Newest first, filtered; reads pages backwards until ``limit`` entries match."""
        found: list[AuditEntry] = []
        upper = "+"
        while len(found) < limit:
            page: Any = await self._client.xrevrange(self.key, max=upper, min="-", count=_READ_PAGE)
            if not page:
                break
            for _entry_id, fields in page:
                entry = AuditEntry.from_fields(fields)
                if (user is None or entry.user == user) and (
                    customer_id is None or entry.customer_id == customer_id
                ):
                    found.append(entry)
                    if len(found) >= limit:
                        break
            if len(page) < _READ_PAGE:
                break
            upper = "(" + _s(page[-1][0])
        return found
