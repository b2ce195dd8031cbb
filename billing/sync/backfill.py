"""Backfill and resync: load every customer's Stripe objects into the store and build every context.

Each list (customers, subscriptions with ``status=all``, invoices, charges) is split into ``created``
windows fetched concurrently; the gateway's token bucket keeps the whole run inside the account's
rate budget and retries 429/5xx. Every page is persisted (slim, under its customer) before its
window's checkpoint moves past it, so an interrupted run resumes where it stopped: finished windows
are skipped, a half-done window continues from ``starting_after`` its last stored object. Contexts
and the email index are built at the end from what is stored, in pipelined batches.

Redis keys (beside the store's, under the tenant, kept by ``billing.cache.backfill_state``):
``backfill:plan`` (the windows of this run), ``backfill:windows`` (window -> ``{"done", "after",
"count"}``), ``backfill:customers`` (ids listed), ``backfill:staged`` (ids staged under).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from billing.cache.store import SNAPSHOT_EVENT_ID, RedisStore
from billing.domain.models import BillingContext, Match
from billing.domain.snapshot import CustomerData, StripeDict, with_previews
from billing.errors import BadQueryError
from billing.ports import ListableResource, StripeReader
from billing.stripe.gateway import background_work
from billing.stripe.slim import (
    Version,
    coupon_ids_of_discount,
    prices_of_subscription,
    referenced_ids,
    slim,
    with_version,
)

RESOURCES: tuple[ListableResource, ...] = (
    "customers", "subscriptions", "invoices", "charges", "disputes", "credit_notes",
)
# Stripe's credit note list takes no ``created`` filter: it is fetched as one window (they are few).
UNWINDOWED: frozenset[str] = frozenset({"credit_notes"})
PAGE_SIZE = 100  # the gateway's list page: one checkpoint per page
BUILD_BATCH = 100
BUILD_PARALLEL = 32
DEFAULT_WINDOWS = 8
DEFAULT_CONCURRENCY = 8
STRIPE_EPOCH = 1_262_304_000  # 2010-01-01: no Stripe object is older
_DAY = 86_400

_LIST_PARAMS: dict[str, dict[str, Any]] = {
    "customers": {"expand": ["data.invoice_settings.default_payment_method"]},
    "subscriptions": {
        "status": "all",
        "expand": ["data.discounts", "data.items.data.discounts", "data.default_payment_method"],
    },
    "invoices": {},
    "charges": {},
    "disputes": {"expand": ["data.charge"]},  # a dispute names no customer; its charge does
    "credit_notes": {},
}
BY_ID = Match(method="customer_id", confidence="exact")

ContextBuilder = Callable[..., BillingContext]


def _default_builder() -> ContextBuilder:
    from billing.domain.builder import build_context

    return build_context


# --- pure planning -------------------------------------------------------------------------------


def split_range(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into at most ``parts`` contiguous, non-empty ``[gte, lt)`` windows."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    if end <= start:
        return []
    span = end - start
    parts = min(parts, span)
    cuts = [start + span * i // parts for i in range(parts + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(parts)]


@dataclass(frozen=True)
class Window:
    """One resource's objects with ``gte <= created < lt``."""

    resource: ListableResource
    gte: int
    lt: int

    @property
    def key(self) -> str:
        return f"{self.resource}:{self.gte}:{self.lt}"


@dataclass(frozen=True)
class Plan:
    """The windows of one backfill run; stored so that ``--resume`` fetches exactly the same ones."""

    start: int
    end: int
    parts: int
    started_at: float

    def windows(self) -> list[Window]:
        ranges = split_range(self.start, self.end, self.parts)
        whole = [(self.start, self.end)] if ranges else []
        return [
            Window(resource, gte, lt)
            for resource in RESOURCES
            for gte, lt in (whole if resource in UNWINDOWED else ranges)
        ]

    def to_json(self) -> str:
        return json.dumps(
            {"start": self.start, "end": self.end, "parts": self.parts, "started_at": self.started_at}
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> Plan:
        data = json.loads(raw)
        return cls(int(data["start"]), int(data["end"]), int(data["parts"]), float(data["started_at"]))


@dataclass
class WindowState:
    done: bool = False
    after: str | None = None  # id of the last stored object: the next page starts after it
    count: int = 0
    floor: int | None = None  # the window was split: objects before this are another window's

    def to_json(self) -> str:
        return json.dumps({"done": self.done, "after": self.after, "count": self.count, "floor": self.floor})

    @classmethod
    def from_json(cls, raw: str | bytes) -> WindowState:
        data = json.loads(raw)
        floor = data.get("floor")
        return cls(bool(data.get("done")), data.get("after"), int(data.get("count") or 0),
                   int(floor) if floor is not None else None)


def split_windows(keys: Iterable[str], planned: Iterable[Window]) -> list[Window]:
    """The windows split off planned ones during a run (their keys in the checkpoint, not in the plan)."""
    known = {w.key for w in planned}
    found = []
    for key in keys:
        resource, _, bounds = key.partition(":")
        gte, _, lt = bounds.partition(":")
        if key not in known and resource in RESOURCES and gte.isdigit() and lt.isdigit():
            found.append(Window(resource, int(gte), int(lt)))
    return sorted(found, key=lambda w: (w.resource, w.gte))


def owner_of(obj: StripeDict) -> str | None:
    """The customer id an object belongs to (None for a charge without customer, e.g. a guest)."""
    if obj.get("object") == "customer":
        return str(obj["id"])
    customer = obj.get("customer")
    if obj.get("object") == "dispute" and isinstance(obj.get("charge"), dict):
        customer = obj["charge"].get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return customer if isinstance(customer, str) else None


# --- progress --------------------------------------------------------------------------------------


class BackfillObserver(Protocol):
    """What a progress display (or a test) is told while a backfill runs; every method is sync."""

    def planned(self, resource: str, windows: int, already_done: int, already_fetched: int) -> None: ...

    def fetched(self, resource: str, count: int) -> None: ...

    def window_done(self, resource: str) -> None: ...

    def building(self, total: int) -> None: ...

    def built(self, count: int) -> None: ...


class SilentObserver:
    def planned(self, resource: str, windows: int, already_done: int, already_fetched: int) -> None:
        pass

    def fetched(self, resource: str, count: int) -> None:
        pass

    def window_done(self, resource: str) -> None:
        pass

    def building(self, total: int) -> None:
        pass

    def built(self, count: int) -> None:
        pass


@dataclass
class BackfillReport:
    resumed: bool
    plan: Plan
    windows_total: int
    windows_skipped: int
    fetched: dict[str, int] = field(default_factory=dict)
    contexts_built: int = 0
    seconds: float = 0.0


# --- the run -------------------------------------------------------------------------------------


class Backfill:
    """One backfill (or resync) of a tenant: ``await Backfill(gateway, store).run(resume=…)``."""

    def __init__(
        self,
        gateway: StripeReader,
        store: RedisStore,
        *,
        windows: int = DEFAULT_WINDOWS,
        concurrency: int = DEFAULT_CONCURRENCY,
        observer: BackfillObserver | None = None,
        build: ContextBuilder | None = None,
        clock: Callable[[], float] = time.time,
        previews: bool = False,
    ) -> None:
        if windows < 1 or concurrency < 1:
            raise BadQueryError("--windows and --concurrency must be at least 1.")
        self.gateway = gateway
        # One preview request per renewing subscription is most of what a backfill would ask Stripe
        # (issue #11: 648 of 763 requests for 600 customers), so by default the cards it builds show
        # the next invoice estimated from the subscription, labelled "(estimate)", until the card is
        # next read from Stripe (a stale or --refresh lookup); ``previews`` asks for them here.
        self.previews = previews
        self.store = store
        self.parts = windows
        self.concurrency = concurrency
        self.observer: BackfillObserver = observer or SilentObserver()
        self.build = build or _default_builder()
        self.clock = clock
        self._stored_refs: set[str] = set()  # tenant objects already written by this run
        self._refs_lock = asyncio.Lock()
        self.state = store.backfill_state()

    @property
    def staged_key(self) -> str:
        """Every customer a page of this run was staged under (listed or not)."""
        return self.state.staged_key

    async def run(self, *, resume: bool = False, since: int | None = None) -> BackfillReport:
        """Fetch every window not done yet, then build every context; ``resume`` keeps the checkpoint.

        Background work: a 429 is waited out with the longer retry budget (``background_work``).
        """
        with background_work():
            return await self._run(resume=resume, since=since)

    async def _run(self, *, resume: bool, since: int | None) -> BackfillReport:
        began = time.monotonic()
        plan = await self.stored_plan() if resume else None
        resumed = plan is not None
        if plan is None:
            plan = await self._new_plan(since)
        states = await self.window_states()
        windows = plan.windows()
        extra = split_windows(states, windows)
        todo = [w for w in [*windows, *extra] if not states.get(w.key, WindowState()).done]
        report = BackfillReport(
            resumed=resumed, plan=plan, windows_total=len(windows),
            windows_skipped=len(windows) - len(todo), fetched=dict.fromkeys(RESOURCES, 0),
        )
        for resource in RESOURCES:
            mine = [w for w in windows if w.resource == resource]
            self.observer.planned(
                resource, len(mine),
                sum(1 for w in mine if states.get(w.key, WindowState()).done),
                sum(states.get(w.key, WindowState()).count for w in mine),
            )

        limit = asyncio.Semaphore(self.concurrency)
        planned_keys = {w.key for w in windows}
        fetches = _Fetches()

        async def fetch(window: Window, state: WindowState) -> None:
            fetches.waiting += 1
            async with limit:
                fetches.waiting -= 1
                count = await self._fetch_window(window, state, fetches, planned=window.key in planned_keys)
            report.fetched[window.resource] += count

        try:
            async with asyncio.TaskGroup() as group:
                fetches.start = lambda w, state: group.create_task(fetch(w, state))
                for window in todo:
                    fetches.start(window, states.get(window.key, WindowState()))
        except BaseExceptionGroup as error:
            raise _first_leaf(error) from None
        report.contexts_built = await self.build_contexts()
        await self.clean_stage()
        await self.store.record(
            backfill_finished_at=self.clock(), backfill_customers=report.contexts_built,
        )
        report.seconds = time.monotonic() - began
        return report

    # -- plan and checkpoint ------------------------------------------------------------------
    async def stored_plan(self) -> Plan | None:
        raw = await self.state.plan()
        return Plan.from_json(raw) if raw else None

    async def window_states(self) -> dict[str, WindowState]:
        return {k: WindowState.from_json(v) for k, v in (await self.state.windows()).items()}

    async def _new_plan(self, since: int | None) -> Plan:
        now = self.clock()
        end = int(now) + 1
        start = since if since is not None else await self.oldest_customer_created(end)
        plan = Plan(start=min(start, end), end=end, parts=self.parts, started_at=now)
        # A new run starts from a clean checkpoint; cached contexts stay served until rebuilt.
        await self.state.start(plan.to_json())
        await self.store.record(backfill_started_at=now)
        return plan

    async def oldest_customer_created(self, end: int) -> int:
        """About the day the oldest customer was created (never after it), found with ``limit=1``
        probes: a search of ``PROBES`` points at a time, so a few sequential round trips, not one per
        halving; it stops once the bound is finer than the windows need (a 64th of the span)."""

        async def any_before(moment: int) -> bool:
            return await _first(
                self.gateway.iter_objects("customers", {"limit": 1, "created": {"lt": moment}})
            ) is not None

        async def probe(points: Sequence[int]) -> list[bool]:
            return list(await asyncio.gather(*(any_before(p) for p in points)))

        low, high = STRIPE_EPOCH, end
        points = _between(low, high, PROBES)
        any_at_all, any_before_epoch, *hits = await probe([end, low, *points])
        if not any_at_all:
            return end  # no customers: nothing to fetch
        if any_before_epoch:
            return 0
        while True:  # invariant: none before low, some before high
            bounds = [low, *points, high]
            first_hit = next((i for i, hit in enumerate(hits) if hit), len(points))
            low, high = bounds[first_hit], bounds[first_hit + 1]
            if high - low <= max(_DAY, (end - high) // 64):
                return low
            points = _between(low, high, PROBES)
            hits = await probe(points)

    # -- fetching -----------------------------------------------------------------------------
    async def _fetch_window(
        self, window: Window, state: WindowState, fetches: _Fetches | None = None, *, planned: bool = True,
    ) -> int:
        """Every page of ``window`` not stored yet. Lists come newest first, so after each full page the
        rest of the window is older than its last object: when a fetch slot is free (``fetches``), the
        older half of that rest becomes a window of its own, fetched at the same time (activity is
        rarely spread evenly over the customers' years: recent invoices and charges would otherwise be
        one window read page after page)."""
        fetched = 0
        while True:
            params: dict[str, Any] = dict(_LIST_PARAMS[window.resource])
            if window.resource not in UNWINDOWED:
                params["created"] = {"gte": _floor(window, state), "lt": window.lt}
            if state.after:
                params["starting_after"] = state.after
            page: list[StripeDict] = []
            narrowed = False
            # A page is as new as the moment before it was requested (the iterator requests the next
            # page when its first object is wanted): a later stamp would hide events between the two.
            listed_from = self._page_version()
            async for obj in self.gateway.iter_objects(window.resource, params):
                page.append(obj)
                if len(page) >= PAGE_SIZE:
                    await self._persist(window, page, state, listed_from)
                    fetched += len(page)
                    narrowed = fetches is not None and await self._split_off(window, state, page[-1], fetches)
                    page = []
                    if narrowed:
                        break  # list again over the narrowed range, after the same object
                    listed_from = self._page_version()
            if not narrowed:
                break
        await self._persist(window, page, state, listed_from, done=True)
        fetched += len(page)
        if planned:
            self.observer.window_done(window.resource)
        return fetched

    async def _split_off(
        self, window: Window, state: WindowState, oldest: StripeDict, fetches: _Fetches
    ) -> bool:
        """Hand the older half of what remains of ``window`` to a window of its own; True when done
        (``state.floor`` then bounds this window's remaining objects)."""
        created = oldest.get("created")
        low = _floor(window, state)
        if (window.resource in UNWINDOWED or not isinstance(created, int) or created - low < MIN_SPLIT_SECONDS
                or fetches.waiting or fetches.start is None):
            return False  # nothing worth splitting, or every fetch slot is taken
        middle = low + (created - low) // 2
        half = Window(window.resource, low, middle)
        # The new window is recorded before this one gives up its range: a run stopped in between
        # resumes with the two overlapping (the overlap is stored twice, the same), never with a gap.
        await self.state.save_window(half.key, WindowState().to_json())
        state.floor = middle
        await self.state.save_window(window.key, state.to_json())
        fetches.start(half, WindowState())
        return True

    def _page_version(self) -> Version:
        return int(self.clock()), SNAPSHOT_EVENT_ID

    async def _persist(
        self, window: Window, page: Sequence[StripeDict], state: WindowState, version: Version, *,
        done: bool = False,
    ) -> None:
        """Store one page under its customers, then move the window's checkpoint past it."""
        if page and window.resource == "subscriptions" and self.previews:
            # the next invoice of each live subscription, as a cold lookup previews it
            page = with_previews(page, await self.gateway.preview_next_invoices(page))
        if page:
            await self._store_references(page, version)
            pipe = self.store.pipeline(transaction=False)
            for obj in page:
                owner = owner_of(obj)
                if owner is None:
                    continue
                entry = with_version(slim(_charge_as_id(obj)), version)
                self.store.stage_objects(pipe, owner, [entry])
                self.state.queue_staged(pipe, owner, listed=window.resource == "customers")
            await pipe.execute()
            state.after = str(page[-1]["id"])
            state.count += len(page)
        state.done = done
        await self.state.save_window(window.key, state.to_json())
        if page:
            self.observer.fetched(window.resource, len(page))

    async def _store_references(self, page: Sequence[StripeDict], version: Version) -> None:
        """Prices (with tiers when tiered), their products and every coupon a page refers to."""
        prices: dict[str, StripeDict] = {}
        coupon_ids: set[str] = set()
        for obj in page:
            if obj.get("object") == "customer":
                coupon_ids |= coupon_ids_of_discount(obj.get("discount"))
            elif obj.get("object") == "subscription":
                for price in prices_of_subscription(obj):
                    prices[str(price["id"])] = price
                _, coupons = referenced_ids(slim(obj))
                coupon_ids |= coupons
        async with self._refs_lock:
            new_prices = [p for p in prices if p not in self._stored_refs]
            new_coupons = sorted(c for c in coupon_ids if c not in self._stored_refs)
            self._stored_refs.update(new_prices, new_coupons)
        objects: list[StripeDict] = []
        product_ids: set[str] = set()
        for price_id in new_prices:
            price = prices[price_id]
            if price.get("billing_scheme") == "tiered" and not price.get("tiers"):
                price = slim({**await self.gateway.price_with_tiers(price_id), "object": "price"})
            objects.append(price)
            if isinstance(price.get("product"), str):
                product_ids.add(price["product"])
        for coupon_id in new_coupons:
            coupon = await self.gateway.coupon(coupon_id)
            if coupon is not None:
                objects.append(slim({**coupon, "object": "coupon"}))
        async with self._refs_lock:
            new_products = sorted(p for p in product_ids if p not in self._stored_refs)
            self._stored_refs.update(new_products)
        for product_id in new_products:
            found = await self.gateway.product(product_id)
            if found is not None:
                objects.append(slim({**found, "object": "product"}))
        for obj in objects:
            await self.store.put_tenant_object(obj, version)

    # -- building -----------------------------------------------------------------------------
    async def build_contexts(self) -> int:
        """Every backfilled customer's context and email index, from the store, in pipelined batches."""
        total = await self.state.customer_count()
        self.observer.building(total)
        built = 0
        batch: list[str] = []
        async for customer_id in self.state.customers():
            batch.append(customer_id)
            if len(batch) >= BUILD_BATCH:
                built += await self._build_batch(batch)
                batch = []
        if batch:
            built += await self._build_batch(batch)
        return built

    async def clean_stage(self) -> int:
        """Staged pages left after the build (their customer was in no listed window: created since,
        deleted, or known only through a charge): folded into a customer the cache already holds,
        else removed. Returns how many were removed. Nothing staged by this run outlives it."""
        removed = 0
        async for customer_id in self.state.staged():
            if not await self.store.has_stage(customer_id):
                continue  # built
            now = datetime.fromtimestamp(self.clock(), UTC)

            def build(data: CustomerData, now: datetime = now) -> BillingContext:
                return self.build(data, query=str(data.customer["id"]), match=BY_ID, now=now, source="stripe")

            if not await self.store.fold_stage(customer_id, build):
                removed += await self.store.drop_stage(customer_id)
        await self.state.forget_staged()
        return removed

    async def _build_batch(self, customer_ids: Sequence[str]) -> int:
        now = datetime.fromtimestamp(self.clock(), UTC)
        # Each customer holds a connection (WATCH) while it is folded: stay well inside the pool.
        gate = asyncio.Semaphore(BUILD_PARALLEL)

        def build(data: CustomerData) -> BillingContext:
            return self.build(data, query=str(data.customer["id"]), match=BY_ID, now=now, source="stripe")

        async def fold(customer_id: str) -> bool:
            async with gate:
                return await self.store.fold_stage(customer_id, build)

        built = await asyncio.gather(*(fold(c) for c in customer_ids))
        self.observer.built(len(customer_ids))
        return sum(built)


# --- helpers -------------------------------------------------------------------------------------


PROBES = 7  # concurrent probes per round of the search for the oldest customer
MIN_SPLIT_SECONDS = 3_600  # a window's remaining range is not split finer than this


@dataclass
class _Fetches:
    """The run's window fetches: how many wait for a slot, and how to start one more."""

    waiting: int = 0
    start: Callable[[Window, WindowState], object] | None = None


def _floor(window: Window, state: WindowState) -> int:
    return window.gte if state.floor is None else max(window.gte, state.floor)


def _between(low: int, high: int, count: int) -> list[int]:
    """Up to ``count`` distinct points strictly inside ``(low, high)``, evenly spaced."""
    return sorted({low + (high - low) * i // (count + 1) for i in range(1, count + 1)} - {low, high})


def _first_leaf(error: BaseExceptionGroup[BaseException]) -> BaseException:
    first = error.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def _first(items: AsyncIterator[StripeDict]) -> StripeDict | None:
    try:
        async for item in items:
            return item
        return None
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _charge_as_id(obj: StripeDict) -> StripeDict:
    charge = obj.get("charge")
    if obj.get("object") == "dispute" and isinstance(charge, dict):
        return {**obj, "charge": charge.get("id")}
    return obj


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


__all__ = [
    "RESOURCES", "Backfill", "BackfillObserver", "BackfillReport", "Plan", "SilentObserver", "Window",
    "WindowState", "owner_of", "split_range",
]
