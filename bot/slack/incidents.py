"""Customer incidents and the recent-alerts list of the Slack alert poster, kept in Redis.

An incident is opened by a customer's ``subscription.past_due`` channel message; later transitions of
that customer are replies in its thread until a recovery or a cancellation closes it. The recent
alerts are a bounded list (newest first) that the App Home tab shows.

Every key lives under the tenant's ``slack`` namespace with one hash tag (``{alerts}``), so that marking
a message sent, opening or closing its incident and listing it among the recent alerts are one MULTI
on Redis Cluster as on a single server (alerts are few: one slot carries them easily)::

    <ns>:{alerts}:msg:<idempotency key>   string  "lease:<time>:<owner>" then "sent:<channel>:<ts>"
    <ns>:{alerts}:incident:<customer id>  string  {"channel", "ts", "started_at", "subscription_id", …}
    <ns>:{alerts}:recent                  list    the last RECENT_KEPT alerts posted (JSON), newest first
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from billing.cache.store import Namespace

TAG = "{alerts}"
RECENT_KEPT = 50


@dataclass(frozen=True)
class Incident:
    """One customer's open incident: the channel message whose thread carries the follow-ups."""

    channel: str
    ts: str
    started_at: float
    subscription_id: str | None
    opened_by: str = ""  # the dedup key of the transition whose message opened it

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Incident:
        data = json.loads(raw)
        return cls(channel=str(data["channel"]), ts=str(data["ts"]), started_at=float(data["started_at"]),
                   subscription_id=data.get("subscription_id"), opened_by=str(data.get("opened_by") or ""))


def message_key(namespace: Namespace, idempotency_key: str) -> str:
    return namespace.key(TAG, "msg", idempotency_key)


def incident_key(namespace: Namespace, customer_id: str) -> str:
    return namespace.key(TAG, "incident", customer_id)


def recent_key(namespace: Namespace) -> str:
    return namespace.key(TAG, "recent")


async def open_incident(namespace: Namespace, customer_id: str) -> Incident | None:
    """The customer's open incident, or None."""
    raw = await namespace.get(incident_key(namespace, customer_id))
    return Incident.from_json(raw) if raw else None


async def recent_alerts(namespace: Namespace, limit: int = 10) -> list[dict[str, Any]]:
    """The last ``limit`` messages the alert poster sent, newest first.

    Each: ``at`` (float, unix seconds), ``customer`` (name or email), ``customer_id``, ``transition``,
    ``channel``, ``ts`` (the message's) and ``thread`` (True for a reply in an incident's thread).
    """
    if limit <= 0:
        return []
    raws = await namespace.lrange(recent_key(namespace), 0, limit - 1)
    out: list[dict[str, Any]] = []
    for raw in raws:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def queue_recent(pipe: Any, namespace: Namespace, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the recent alerts in ``pipe`` (a MULTI), keeping the newest RECENT_KEPT."""
    key = recent_key(namespace)
    pipe.lpush(key, json.dumps(entry, separators=(",", ":"), ensure_ascii=False))
    pipe.ltrim(key, 0, RECENT_KEPT - 1)


__all__ = [
    "RECENT_KEPT", "Incident", "incident_key", "message_key", "open_incident", "queue_recent",
    "recent_alerts", "recent_key",
]
