"""The reminder scheduler: renewal and trial reminders, sent N days ahead, once per period.

Stripe's own ``invoice.upcoming`` and ``customer.subscription.trial_will_end`` depend on account
settings (and come at times Stripe picks), so the worker keeps its own schedule from the cached
contexts. ``billing.domain.reminders`` says what is due (pure); this module keeps the moments in Redis
and turns what is due into transitions, queued in the customer's outbox like any other transition: the
worker's sweeper notifies them (``EventWorker.run`` ticks this scheduler).

Keys (``p`` = the tenant prefix)::

    p:reminders:due              zset    customer -> when to look at it next (unix seconds)
    p:reminders:dirty            set     customers to (re)compute the moment of (every save of a
                                         context puts its customer here, and so does a walk)
    p:reminders:taking           set     customers a tick took from dirty and has not stored the
                                         moment of yet (one that died: the next tick takes them first)
    p:reminders:index            hash    leads (lead-time fingerprint), walking, cursor, walked_at,
                                         ticked_at (the last tick: ``billing status``, ``/metrics``)
    p:reminders:lock             string  the scheduler ticking now (one per tenant at a time)
    p:{cus_1}:reminded:<k>:<sub>:<period>   hash: N -> when queued, the once-marker of the reminders
                                            of one period (until its date)

Surviving restarts and duplicates: the moments and the walk's cursor live in Redis, and a reminder is
queued in the same MULTI that sets its once-marker (WATCHed), so a second scheduler, a restart or a
re-walk finds the marker and queues nothing. A new period has a new date, hence a new marker.
One reminder per alert per period: the marker holds every lead time queued for the period, and a lead
time a reload took away counts for the nearest new one (``already_reminded``): changing ``days_before``
from 7 to 10 after the 7-day reminder reminds no one again, a second alert at 1 day reminds once more.

Finding changes: the tenant's customers are walked (``SSCAN``, a bounded step per tick) whenever the
lead times change and ``rewalk_after`` seconds after the last walk, each context's next moment
recomputed. A subscription created or renewed is scheduled sooner: every save of a context (the
worker's, a lookup's, a backfill's: ``RedisStore.queue_saved``, in the save's round trip where the
keys allow) adds its customer to ``reminders:dirty``, looked at on the next tick; the walk catches
whatever a save could not mark (a crash between a cluster's two round trips).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from billing.cache.connections import REDIS_ERRORS
from billing.cache.store import RedisStore, decode_context
from billing.domain.models import BillingContext
from billing.domain.reminders import (
    LeadTimes,
    Reminder,
    already_reminded,
    due_reminders,
    leads_fingerprint,
    next_due,
    wake_at,
)
from billing.ports import Transition
from billing.sync.worker import _transition_to_dict

log = logging.getLogger("billing.sync.scheduler")

# A once-marker outlives its reminder's date by this much: a clock a little behind never sees the
# reminder as due again.
MARKER_MARGIN = timedelta(days=2)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class SchedulerStats:
    ticks: int = 0
    walked: int = 0  # customers met by walks
    computed: int = 0  # contexts whose next moment was computed
    queued: int = 0  # reminders queued (each once)
    already: int = 0  # reminders found due and already queued (a restart, another scheduler)


@dataclass
class ReminderScheduler:
    """Tick it (``maybe_tick``, or ``run``); ``leads`` is called per tick, so a reloaded rules file's
    ``days_before`` take effect at once (the changed fingerprint starts a walk)."""

    store: RedisStore
    leads: Callable[[], LeadTimes]
    clock: Callable[[], datetime] = _utcnow
    interval: float = 5.0  # seconds between ticks
    batch: int = 200  # customers per Redis round trip
    max_per_tick: int = 1000  # customers walked, computed or fired per tick (bounds a tick's time)
    rewalk_after: float = 3600.0
    lock_ms: int = 30_000
    stats: SchedulerStats = field(default_factory=SchedulerStats)
    # Called with the customers a tick took to compute, before their moments are stored (tests fail
    # the tick there: a crash or Redis failing mid-tick).
    taken: Callable[[Sequence[str]], Awaitable[None]] | None = None
    last_tick_at: float | None = None
    _last_tick: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.state = self.store.reminder_state()

    # ---- keys -------------------------------------------------------------------------------
    @property
    def due_key(self) -> str:
        return self.state.due_key

    @property
    def dirty_key(self) -> str:
        return self.state.dirty_key

    @property
    def index_key(self) -> str:
        return self.state.index_key

    @property
    def lock_key(self) -> str:
        return self.state.lock_key

    def marker_key(self, customer_id: str, reminder: Reminder) -> str:
        return self.store.customer_key(customer_id, _marker_part(reminder))

    # ---- the loop ---------------------------------------------------------------------------
    async def maybe_tick(self) -> int:
        """Tick when ``interval`` has passed since the last tick; returns the reminders queued.

        Redis errors are raised (the worker waits Redis out); any other failure is logged and tried
        again next time: the worker's events never wait for reminders."""
        now = time.monotonic()
        if self._last_tick is not None and now - self._last_tick < self.interval:
            return 0
        self._last_tick = now
        try:
            return await self.tick()
        except REDIS_ERRORS:
            raise
        except Exception:
            log.exception("the reminder scheduler failed; it tries again in %.0f s", self.interval)
            return 0

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set (``EventWorker.run`` ticks it itself)."""
        while not stop.is_set():
            await self.maybe_tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def tick(self) -> int:
        """Walk a step, compute the moments of dirty customers, queue what is due; returns how many
        reminders were queued. One scheduler per tenant ticks at a time (the others skip)."""
        token = uuid.uuid4().hex
        if not await self.state.lock(token, lock_ms=self.lock_ms):
            return 0
        self.stats.ticks += 1
        self.last_tick_at = ticked_at = time.time()
        try:
            now = self.clock()
            leads = self.leads()
            await self._walk(leads, now)
            await self._compute_dirty(leads, now)
            queued = await self._fire(leads, now)
            await self.state.record_tick(ticked_at)
            return queued
        finally:
            await self.state.unlock(token)

    # ---- finding moments --------------------------------------------------------------------
    async def _walk(self, leads: LeadTimes, now: datetime) -> None:
        """One bounded step of the walk over the tenant's customers (starting one when due)."""
        state = await self.state.walk_state()
        fingerprint = leads_fingerprint(leads)
        walking = state.get("walking") == "1"
        walked_at = float(state.get("walked_at") or 0)
        stale = not walking and now.timestamp() - walked_at >= self.rewalk_after
        if state.get("leads") != fingerprint or stale:
            state = {"leads": fingerprint, "walking": "1", "cursor": "0", "walked_at": str(walked_at)}
        elif not walking:
            return
        cursor = int(state.get("cursor") or 0)
        met = 0
        while met < self.max_per_tick:
            cursor, members = await self.state.scan_customers(cursor, self.batch)
            if members:
                await self.state.mark_dirty(members)
                met += len(members)
            if cursor == 0:
                state.update(walking="0", walked_at=str(now.timestamp()))
                break
        state["cursor"] = str(cursor)
        self.stats.walked += met
        await self.state.save_walk_state(state)

    async def _compute_dirty(self, leads: LeadTimes, now: datetime) -> None:
        """The next moment of each dirty customer, from its cached context."""
        done = 0
        while done < self.max_per_tick:
            ids = await self.state.take_dirty(self.batch)
            if not ids:
                return
            if self.taken is not None:
                await self.taken(ids)
            contexts = await self._contexts(ids)
            moments: dict[str, float | None] = {}
            for customer_id in ids:
                context = contexts.get(customer_id)
                moment = wake_at(context, leads, now) if context is not None else None
                moments[customer_id] = moment.timestamp() if moment is not None else None
            await self.state.set_moments(moments)
            await self.state.computed(ids)
            done += len(ids)
            self.stats.computed += len(ids)
            await asyncio.sleep(0)  # the event loop is shared with the webhook endpoint in serve

    async def _contexts(self, ids: Sequence[str]) -> dict[str, BillingContext]:
        raws = await self.store.contexts_as_stored(ids)
        out: dict[str, BillingContext] = {}
        for customer_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            try:
                out[customer_id] = decode_context(raw)
            except (ValueError, zlib.error):
                log.warning("customer %s: cached context unreadable; no reminders until it is rebuilt",
                            customer_id)
        return out

    # ---- sending ----------------------------------------------------------------------------
    async def _fire(self, leads: LeadTimes, now: datetime) -> int:
        """Queue every due reminder of the customers whose moment has come, then reschedule them."""
        queued = 0
        seen = 0
        while seen < self.max_per_tick:
            ids = await self.state.due(now.timestamp(), self.batch)
            if not ids:
                break
            contexts = await self._contexts(ids)
            for customer_id in ids:
                context = contexts.get(customer_id)
                if context is not None:
                    for reminder in due_reminders(context, leads, now):
                        queued += await self._queue_once(customer_id, reminder, context, leads, now)
                moment = next_due(context, leads, now) if context is not None else None
                await self.state.set_moment(customer_id, moment.timestamp() if moment is not None else None)
            seen += len(ids)
        return queued

    async def _queue_once(self, customer_id: str, reminder: Reminder, context: BillingContext,
                          leads: LeadTimes, now: datetime) -> int:
        """Put the reminder's transition in the customer's outbox unless its marker says it was; 1 if
        queued. The marker and the outbox entry are written in one MULTI (one slot: the customer's)."""
        transition = Transition(
            name=reminder.kind, customer_id=customer_id, object_id=reminder.subscription_id,
            event_id=reminder.cause, context=context, days_before=reminder.days_before,
        )
        entry = json.dumps(_transition_to_dict(transition), separators=(",", ":"), ensure_ascii=False)
        expires = max(int((reminder.date + MARKER_MARGIN - now).total_seconds()), 60)
        # Scheduled before it is queued: a crash in between leaves an empty pending entry (the sweeper
        # drops it), never a queued reminder nobody comes back to.
        await self.store.outboxes.schedule(customer_id, delay=0)
        kind_leads = leads.get(reminder.kind, ())

        def done(sent: set[str]) -> bool:
            return already_reminded(reminder.days_before, {int(days) for days in sent if days.isdigit()},
                                    kind_leads)

        pushed = await self.store.outbox(customer_id).push_once(
            _marker_part(reminder), str(reminder.days_before), now.isoformat(), entry,
            done=done, marker_seconds=expires,
            # Markers of the version before (one string per lead time): an upgrade reminds no one again.
            legacy={str(days): f"{_marker_part(reminder)}:{days}"
                    for days in {*kind_leads, reminder.days_before}},
        )
        if pushed is None:
            raise RuntimeError(f"the reminder marker of customer {customer_id} kept changing")
        if not pushed:
            self.stats.already += 1
            return 0
        self.stats.queued += 1
        log.info("%s of %s (%s, %d days ahead) queued for customer %s", reminder.kind,
                 reminder.subscription_id, reminder.date.date().isoformat(), reminder.days_before,
                 customer_id)
        return 1


def _marker_part(reminder: Reminder) -> str:
    return f"reminded:{reminder.kind}:{reminder.subscription_id}:{reminder.period}"
