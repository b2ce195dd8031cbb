"""Stripe webhook ingest, framework-free: verify the signature on the raw body, append to the stream.

Kept lean on purpose (one HMAC, one JSON parse, one XADD): the endpoint must accept thousands of
events per second and answer ``invoice.created`` fast. Nothing is acknowledged (200) unless the
event is in the Redis Stream; when Redis cannot take it the answer is 503 so Stripe retries.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import time
from dataclasses import dataclass, field

import orjson

from billing.cache.connections import REDIS_ERRORS
from billing.cache.store import RedisStore

log = logging.getLogger("billing.sync.webhook")

MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_JSON_DEPTH = 64  # Stripe's events nest about 10 levels (list > item > price > recurring ...)
_HEALTH_WRITE_INTERVAL = 1.0
_TOO_DEEP = "The body is not a Stripe event: nested too deeply."
_NOT_A_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether the JSON in ``body`` opens more than ``limit`` arrays/objects inside each other.

    Checked before parsing (``json.loads`` recurses, and a body nested 200,000 deep is 400 KB), with C-speed
    byte operations: fewer brackets than ``limit`` settles it; otherwise escapes are dropped, the text
    between quotes (string contents, whose brackets are text) is dropped, and the brackets left are
    counted, stopping at the first one past ``limit``. Malformed JSON is left to the parser.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_A_BRACKET)
    depth = 0
    for char in skeleton:
        if char in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _signature_parts(header: str) -> tuple[int, list[str]] | None:
    """The timestamp and the ``v1`` signatures of a ``Stripe-Signature`` header, read as stripe-python
    reads them (``WebhookSignature._get_timestamp_and_signatures``: the first ``t``, every ``v1``; a
    ``t`` or ``v1`` item without a value makes the header unreadable); None when unreadable."""
    items = [item.split("=", 2) for item in header.split(",")]
    try:
        stamps = [item[1] for item in items if item[0] == "t"]
        signatures = [item[1] for item in items if item[0] == "v1"]
        return int(stamps[0]), signatures
    except (IndexError, ValueError):
        return None


@functools.lru_cache(maxsize=16)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with ``secret`` and given no data yet: each body's HMAC starts from a copy
    (keying hashes the key's padded blocks: a quarter of the HMAC of a 1 KiB event, repeated per
    request by ``hmac.digest``), and the body is hashed in place, not first copied behind the timestamp."""
    return hmac.new(secret.encode("utf-8"), digestmod="sha256")


def verified_timestamp(body: bytes, header: str, secret: str, tolerance: int, now: float) -> int | None:
    """What ``stripe.WebhookSignature.verify_header`` decides (a ``v1`` signature equal to the
    HMAC-SHA256 of ``"{t}." + body`` under ``secret``, ``t`` not older than ``tolerance``), on the raw
    bytes with C-level HMAC from a keyed copy: the SDK decodes the body to sign it re-encoded, builds
    a Python HMAC object and reparses the header (a twentieth of a webhook's CPU under load). A
    non-ASCII signature is a mismatch here, where the SDK's ``compare_digest`` raised a TypeError. The
    header's timestamp when the body is verified, else None."""
    parts = _signature_parts(header)
    if parts is None or not secret.strip(" \t\r\n\f\v"):
        return None
    timestamp, signatures = parts
    signer = _keyed(secret).copy()
    signer.update(b"%d." % timestamp)
    signer.update(body)
    expected = signer.hexdigest()
    if not any(hmac.compare_digest(expected, s) for s in signatures if s.isascii()):
        return None
    return None if tolerance and timestamp < now - tolerance else timestamp


def _parse(body: bytes, text: str) -> object:
    """The JSON of ``body`` (``text`` decoded): orjson, about 2.5x faster than ``json.loads`` (the parse
    was the largest cost of an accepted webhook after HTTP itself), and on what orjson refuses,
    ``json.loads``, so that the same bodies are accepted as before (a lone surrogate escape, NaN, a
    number past a double: the worker parses with ``json``). Raises ValueError when neither can."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _is_stripe_id(value: str) -> bool:
    """Stripe's ids are short printable ASCII (``evt_1Nq...``). json.loads also reads ids with a lone
    surrogate escape (which redis-py cannot encode: the worker's dedup lookup raised for its whole
    batch, every retry) or control characters; such an id is no event of Stripe's."""
    return 0 < len(value) <= 255 and value.isascii() and value.isprintable() and " " not in value


def _is_thin(event: dict[str, object]) -> bool:
    """A v2 thin event: ``v2.core.event``, or an event naming a ``related_object`` without carrying it."""
    if event.get("object") == "v2.core.event":
        return True
    data = event.get("data")
    carried = isinstance(data, dict) and isinstance(data.get("object"), dict)
    return "related_object" in event and not carried


@dataclass(frozen=True)
class WebhookResult:
    status: int
    message: str
    outcome: str  # queued | ignored | rejected | unavailable
    event_id: str | None = None
    event_type: str | None = None  # only from a verified event: a metric label, never user text


def _metric_type(event_type: str) -> str:
    # Signed by Stripe, but still bounded: a label set must stay small.
    plain = event_type.replace(".", "").replace("_", "")
    return event_type if len(event_type) <= 64 and plain.isascii() and plain.isalnum() else "other"


@dataclass
class WebhookIngest:
    """Turns one webhook request (raw body + ``Stripe-Signature`` header) into a queued event."""

    store: RedisStore
    secret: str = field(repr=False)
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS
    max_body: int = MAX_BODY_BYTES
    _last_health_write: float = 0.0
    _pending: list[tuple[bytes, asyncio.Future[None]]] = field(default_factory=list, repr=False)
    _writer: asyncio.Task[None] | None = field(default=None, repr=False)

    async def handle(self, body: bytes, signature: str | None) -> WebhookResult:
        if len(body) > self.max_body:
            return WebhookResult(413, f"The body is larger than {self.max_body} bytes.", "rejected")
        if not signature:
            return WebhookResult(400, "The Stripe-Signature header is missing.", "rejected")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return WebhookResult(400, "The body is not UTF-8 JSON.", "rejected")
        now = time.time()
        timestamp = verified_timestamp(body, signature, self.secret, self.tolerance, now)
        if timestamp is None:
            return WebhookResult(
                400,
                f"The Stripe-Signature does not match the body or is older than {self.tolerance} s.",
                "rejected",
            )
        # stripe-python only refuses old timestamps: a signature made for the future would stay
        # replayable until then.
        if timestamp > now + self.tolerance:
            return WebhookResult(
                400,
                f"The Stripe-Signature timestamp is more than {self.tolerance} s in the future; "
                "check the clock of this server.",
                "rejected",
            )
        if nested_deeper_than(body, MAX_JSON_DEPTH):
            return WebhookResult(400, _TOO_DEEP, "rejected")
        try:
            event = _parse(body, text)
        except RecursionError:  # the scan above makes this unreachable; kept as the last guard
            return WebhookResult(400, _TOO_DEEP, "rejected")
        except ValueError:
            return WebhookResult(400, "The body is not valid JSON.", "rejected")
        if not (
            isinstance(event, dict)
            and isinstance(event.get("id"), str)
            and isinstance(event.get("type"), str)
        ):
            return WebhookResult(
                400, "The body is not a Stripe event (a JSON object with id and type).", "rejected"
            )
        event_id: str = event["id"]
        if not _is_stripe_id(event_id):
            return WebhookResult(400, "The body is not a Stripe event: its id is not a Stripe id.",
                                 "rejected")
        if _is_thin(event):
            log.warning("refused thin (v2) event %s of type %s: this endpoint takes snapshot events",
                        event_id, event["type"])
            return WebhookResult(
                400,
                "This endpoint takes Stripe's snapshot events; a thin (v2) event carries no object: "
                "create the webhook endpoint with the snapshot payload style.",
                "rejected", event_id,
            )
        event_type = _metric_type(event["type"])
        if bool(event.get("livemode")) != self.store.tenant.livemode:
            log.info("ignored %s event %s of the other mode", event["type"], event_id)
            return WebhookResult(200, "Ignored: event of the other mode.", "ignored", event_id, event_type)
        try:
            await self._enqueue(body)
        except REDIS_ERRORS as exc:
            log.warning("could not queue event %s: %s", event_id, type(exc).__name__)
            return WebhookResult(503, "The event queue is unavailable; retry later.", "unavailable", event_id,
                                 event_type)
        return WebhookResult(200, "Queued.", "queued", event_id, event_type)

    async def _enqueue(self, body: bytes) -> None:
        """Returns once ``body`` is in the stream (Stripe is answered 200 only then). Bodies that
        arrive while a write is in flight go out together in the next one: one round trip for many
        concurrent webhooks (redis-py's per-command work was about a third of a request's CPU)."""
        writer = self._writer
        if writer is None or writer.done():
            loop = asyncio.get_running_loop()
            self._writer = loop.create_task(self._write_pending())
        else:
            # The writer's loop is the running one; asking asyncio for it costs a getpid() system call
            # on Python 3.11, per request.
            loop = writer.get_loop()
        written: asyncio.Future[None] = loop.create_future()
        self._pending.append((body, written))
        await written

    async def _write_pending(self) -> None:
        while self._pending:
            batch: list[tuple[bytes, asyncio.Future[None]]] = []
            try:
                # One turn of the loop before taking the batch: the requests read from the sockets
                # in the same turn join it (under load: larger batches, fewer round trips; measured
                # about 5% more events/s for the latency of one loop turn).
                await asyncio.sleep(0)
                batch, self._pending = self._pending, []
                await self._write([body for body, _ in batch])
            except BaseException as exc:
                for _, written in batch:
                    if not written.done():
                        written.set_exception(exc)
                if not isinstance(exc, Exception):
                    for _, written in self._pending:  # cancelled (shutdown): nobody writes these
                        written.cancel()
                    self._pending = []
                    raise
            else:
                for _, written in batch:
                    if not written.done():  # a request cancelled meanwhile (client gone)
                        written.set_result(None)

    async def _write(self, bodies: list[bytes]) -> None:
        now = time.time()
        if now - self._last_health_write < _HEALTH_WRITE_INTERVAL:
            await self.store.stream.append_all(bodies)
            return
        # At most once a second per process, the health record rides along in the same round trip.
        pipe = self.store.pipeline(transaction=False)
        self.store.stream.queue_append_all(pipe, bodies)
        self.store.queue_record(pipe, last_webhook_at=now)
        await pipe.execute()
        self._last_health_write = now
