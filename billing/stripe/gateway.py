"""The Stripe gateway: read-only, rate-limited, retried access to Stripe through one async StripeClient.

Implements ``billing.ports.StripeReader``. Objects leave this module as plain dicts
(``StripeObject.to_dict()``) in Stripe's current API shape. The API key never appears in a message or
a log line: Stripe's own error messages can quote part of it, so they are never passed on for 401/403.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from billing.config import Settings
from billing.domain.snapshot import CustomerData, StripeDict, id_of, with_previews
from billing.errors import BadQueryError, ConfigurationError, StripeUnavailableError
from billing.ports import ListableResource, Tenant

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import stripe
    from tenacity import RetryCallState
else:

    class _LazyStripe:
        """The ``stripe`` SDK, imported on first use: it is a third of a CLI command's start-up, and a
        lookup served from the cache never sends a request (every use below is inside a call)."""

        def __getattr__(self, name: str) -> Any:
            import stripe as sdk

            return getattr(sdk, name)

    stripe = _LazyStripe()

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

LIST_LIMIT = 100
TEST_RATE = 20.0  # requests/s; Stripe allows 25/s in test mode, keep headroom for other clients
LIVE_RATE = 90.0  # of 100/s in live mode
SEARCH_RATE = 18.0  # of the Search API's own 20 reads/s (every mode), on top of the general budget

# The read permission (as Stripe names it in a 403) each resource needs.
PERMISSIONS: dict[ListableResource, str] = {
    "customers": "rak_customer_read",
    "subscriptions": "rak_subscription_read",
    "invoices": "rak_invoice_read",
    "charges": "rak_charge_read",
    "prices": "rak_plan_read",
    "products": "rak_product_read",
    "coupons": "rak_coupon_read",
    "events": "rak_event_read",
    "disputes": "rak_dispute_read",
    "credit_notes": "rak_credit_note_read",
}
# The card of a default payment method comes with the customer and its subscriptions (no extra request).
CUSTOMER_CARD = "invoice_settings.default_payment_method"
# Subscriptions that will invoice again: their next invoice is previewed on a cold lookup.
PREVIEWED_STATUSES = frozenset({"active", "trialing", "past_due"})
PREVIEW_PERMISSION = "rak_invoice_read"  # what Stripe asks of a restricted key for create_preview
# A key refused previews is not asked again for this long: every subscription or invoice event marks
# its customer for a refresh, and each would be one more 403 (and one more log line) otherwise.
PREVIEW_DENIED_RECHECK_SECONDS = 300.0
_PERMISSION_IN_MESSAGE = re.compile(r"\brak_[a-z_]+_read\b")
_KEY_SHAPE = re.compile(r"(rk|sk)_(live|test)_[A-Za-z0-9]+")

# A lookup by another id retrieves that object for its customer: (path, what a restricted key needs).
OWNED_OBJECTS: dict[str, tuple[str, str]] = {
    "subscription": ("subscriptions", "rak_subscription_read"),
    "invoice": ("invoices", "rak_invoice_read"),
    "charge": ("charges", "rak_charge_read"),
    "payment_intent": ("payment_intents", "rak_payment_intent_read"),
}

_NO_KEY = "STRIPE_API_KEY is not set; give a restricted key (rk_test_… or rk_live_…)."
_BAD_KEY_401 = "Stripe refused the API key (401): check STRIPE_API_KEY."


# --- keys --------------------------------------------------------------------------------------


# Fields Stripe returns only when expanded; a retrieved price or coupon always asks for them.
_INCLUDABLE: dict[str, tuple[str, ...]] = {
    "prices": ("tiers", "currency_options"),
    "coupons": ("applies_to", "currency_options"),
}


def check_api_key(key: str | None, *, allow_secret_key: bool = False) -> str:
    """The key when it is a usable restricted key (or an allowed secret key), else ConfigurationError."""
    if key is None or not key.strip():
        raise ConfigurationError(_NO_KEY)
    key = key.strip()
    if key.startswith(("pk_live_", "pk_test_")):
        raise ConfigurationError(
            "STRIPE_API_KEY is a publishable key (pk_…), which cannot read billing data; "
            "give a restricted key (rk_test_… or rk_live_…)."
        )
    if not _KEY_SHAPE.fullmatch(key):
        raise ConfigurationError(
            "STRIPE_API_KEY does not look like a Stripe API key; "
            "give a restricted key (rk_test_… or rk_live_…)."
        )
    if key.startswith("sk_") and not allow_secret_key:
        raise ConfigurationError(
            "STRIPE_API_KEY is a full secret key (sk_…), which can write to your account; give a "
            "read-only restricted key (rk_test_… or rk_live_…) or set BILLING_ALLOW_SECRET_KEY=1."
        )
    return key


def check_key(settings: Settings) -> str:
    """The Stripe key from settings, checked as in ``check_api_key``."""
    secret = settings.stripe_api_key
    return check_api_key(
        secret.get_secret_value() if secret is not None else None,
        allow_secret_key=settings.allow_secret_key,
    )


def key_livemode(key: str) -> bool:
    return key.startswith(("rk_live_", "sk_live_"))


def key_account_id(key: str) -> str:
    """A stable stand-in account id when the key may not read ``/v1/account``."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


_ACCOUNT_IN_MESSAGE = re.compile(r"\bon account '(acct_[A-Za-z0-9]+)'")


def account_named_in(message: str) -> str | None:
    """The account id a Stripe 403 names ("… for this endpoint on account 'acct_1A2b'."), if any."""
    found = _ACCOUNT_IN_MESSAGE.search(message)
    return found.group(1) if found else None


_OTHER_MODE = re.compile(r"a similar object exists in (live|test) mode")


def _refuse_other_mode(err: stripe.InvalidRequestError, what: str, object_id: str) -> None:
    """Raise BadQueryError when Stripe's 404 says the id exists in the other mode ("No such customer:
    'cus_1'; a similar object exists in live mode, but a test mode key was used …"): the object is
    there, under the other key, and "not found" would say it is not."""
    found = _OTHER_MODE.search(str(err.user_message or err))
    if found is None:
        return
    mode = found.group(1)
    key_mode = "test" if mode == "live" else "live"
    raise BadQueryError(
        f"{object_id} is a {mode}-mode {what} and STRIPE_API_KEY is a {key_mode}-mode key; look it up "
        f"with a {mode}-mode key."
    )


def _permission_sentence(missing: Iterable[str], resources: Iterable[str]) -> str:
    names = sorted(set(missing))
    what = ", ".join(sorted({r.replace("_", " ") for r in resources}))
    noun = "permission" if len(names) == 1 else "permissions"
    return (
        f"The Stripe key is missing the {', '.join(names)} {noun} (403); "
        f"give the restricted key read access to {what}."
    )


def _missing_permission(err: stripe.PermissionError, resource: ListableResource) -> str:
    found = _PERMISSION_IN_MESSAGE.search(str(err))
    return found.group(0) if found else PERMISSIONS[resource]


def _refused(err: stripe.PermissionError, resource: ListableResource) -> ConfigurationError:
    """A 403 on one resource as the one sentence naming the permission the key lacks."""
    return ConfigurationError(_permission_sentence([_missing_permission(err, resource)], [resource]))


# --- rate limiting and caching -------------------------------------------------------------------


class TokenBucket:
    """Client-side rate limit: ``rate`` requests per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ConfigurationError(f"BILLING_STRIPE_RATE must be above 0 requests/s, not {rate}.")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


class RateLimiter(Protocol):
    """What the gateway waits on before each request."""

    rate: float

    async def acquire(self) -> None: ...


# One window of a shared budget: grant when fewer than ARGV[1] were granted in it (KEYS[1]), and let
# the key expire soon after the window (ARGV[2] ms). 1 when granted, 0 when the window is spent.
_WINDOW_LUA = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
if n == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""
_LOCAL_AFTER_REDIS_FAILURE = 5.0  # seconds on the local bucket before asking the shared one again
_GRANTS_KEPT = 256  # windows remembered in ``SharedRateLimit.granted`` (observation only)


class SharedRateLimit:
    """One Stripe budget for every process of a tenant (``serve``, ``worker``, ``backfill``), in Redis.

    Time is cut into windows of ``window`` seconds (a tenth of a second, or one request's worth at
    rates under 10/s); each window grants at most ``limit`` requests across all processes, counted in
    one short-lived key per window (``{key}:{window number}``, one slot, so a cluster serves it as a
    single server does). Small windows keep the burst at a window boundary small.

    Redis is never a reason to fail a request: when it does not answer, ``fallback`` (this process's
    own ``TokenBucket``) decides for the next few seconds, then Redis is asked again.
    """

    def __init__(
        self, client: Any, key: str, fallback: TokenBucket, *, clock: Callable[[], float] = time.time,
    ) -> None:
        self.rate = fallback.rate
        self.window = max(0.1, 1.0 / self.rate)
        self.limit = max(1, round(self.rate * self.window))
        self.key = key
        self.fallback = fallback
        self.granted: OrderedDict[int, int] = OrderedDict()  # window number -> grants by this process
        self.fallbacks = 0  # requests the local bucket decided while Redis did not answer
        self._client = client
        self._script: Any = None
        self._clock = clock
        self._local_until = 0.0

    async def acquire(self) -> None:
        while True:
            if time.monotonic() < self._local_until:
                await self._local()
                return
            now = self._clock()
            window = int(now // self.window)
            try:
                if self._script is None:
                    self._script = self._client.register_script(_WINDOW_LUA)
                granted = await self._script(
                    keys=[f"{self.key}:{window}"], args=[self.limit, int(self.window * 2000) + 1000]
                )
            except Exception as err:
                log.warning("the shared Stripe rate limit is unavailable (%s); this process keeps to its "
                            "own budget for %.0f s", type(err).__name__, _LOCAL_AFTER_REDIS_FAILURE)
                self._local_until = time.monotonic() + _LOCAL_AFTER_REDIS_FAILURE
                await self._local()
                return
            if granted:
                self.granted[window] = self.granted.get(window, 0) + 1
                while len(self.granted) > _GRANTS_KEPT:
                    self.granted.popitem(last=False)
                return
            # Spent: try again early in the next window (jittered, so processes do not all ask at once).
            await asyncio.sleep((window + 1) * self.window - now + random.uniform(0, self.window / 4))

    async def _local(self) -> None:
        self.fallbacks += 1
        await self.fallback.acquire()


async def _acquire_all(*limiters: RateLimiter) -> None:
    for limiter in limiters:
        await limiter.acquire()


# Requests made inside ``background_work()`` (the worker, a backfill) wait out rate limiting longer.
_BACKGROUND: ContextVar[bool] = ContextVar("billing_stripe_background", default=False)


@contextmanager
def background_work() -> Iterator[None]:
    """Mark the requests made inside (and in the tasks started inside) as background work: nobody is
    waiting on them, so a 429 is retried ``RetryPolicy.background_attempts`` times before the work
    counts as failed (a worker delivery, a backfill), instead of an interactive lookup's few."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


class TTLCache(Generic[K, V]):
    """Bounded in-process cache whose entries expire; the oldest entry goes first when full."""

    def __init__(self, maxsize: int, ttl: float) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def set(self, key: K, value: V) -> None:
        self._items[key] = (time.monotonic() + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


# --- retry policy --------------------------------------------------------------------------------


def is_transient(err: BaseException) -> bool:
    """429, 5xx and connection failures/timeouts are worth another try; nothing else is."""
    if isinstance(err, stripe.RateLimitError | stripe.APIConnectionError):
        return True
    return isinstance(err, stripe.APIError) and (err.http_status or 0) >= 500


def _reason(err: BaseException) -> str:
    if isinstance(err, stripe.RateLimitError):
        return "rate limited (429)"
    if isinstance(err, stripe.APIConnectionError):
        return "could not connect or timed out"
    if isinstance(err, stripe.StripeError) and err.http_status:
        return f"HTTP {err.http_status}"
    return type(err).__name__


_RETRY_AFTER_CAP = 60.0  # a Retry-After beyond this is not waited out within one request


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(cap, base·2ⁿ)].

    A 429 is Stripe saying the account's budget is spent (by us or by another client of the account):
    its waits are longer and never near zero (uniform in the upper half of
    ``min(rate_limited_cap, rate_limited_base·2ⁿ)``), at least Stripe's ``Retry-After`` when it sends
    one, and background work (``background_work()``) tries ``background_attempts`` times.
    """

    attempts: int = 4
    base_seconds: float = 0.25
    cap_seconds: float = 4.0
    rate_limited_base_seconds: float = 0.5
    rate_limited_cap_seconds: float = 8.0
    background_attempts: int = 12

    def wait_after_rate_limit(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.rate_limited_cap_seconds, self.rate_limited_base_seconds * 2 ** (attempt - 1))
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, _RETRY_AFTER_CAP))
        return wait

    def attempts_after_rate_limit(self, *, background: bool) -> int:
        return max(self.attempts, self.background_attempts) if background else self.attempts


def _header(err: BaseException, name: str) -> str | None:
    headers = getattr(err, "headers", None) or {}
    try:
        items = list(headers.items())
    except AttributeError:
        return None
    wanted = name.lower()
    return next((str(v) for k, v in items if str(k).lower() == wanted), None)


def _retry_after(err: BaseException) -> float | None:
    """Seconds from a 429's ``Retry-After`` header, when Stripe sends one (a number of seconds)."""
    raw = _header(err, "Retry-After")
    try:
        seconds = float(raw) if raw is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 and seconds == seconds else None


def _to_dict(obj: Any) -> StripeDict:
    """A StripeObject as the JSON-shaped dict a webhook would carry.

    The SDK parses ``*_decimal`` fields into ``Decimal``; webhooks carry them as strings. Turning them
    back into strings here means the cold path and the webhook path hand the builder and the store
    the very same shapes.
    """
    result: StripeDict = _json_shaped(obj.to_dict() if hasattr(obj, "to_dict") else dict(obj))
    return result


def _json_shaped(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_shaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_shaped(v) for v in value]
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def search_string(value: str, quote: str = "'") -> str:
    """``value`` as a string of Stripe's search query language: in ``quote``s, with a backslash before
    each backslash and each ``quote`` inside it (``o'brien`` -> ``'o\\'brien'``)."""
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return f"{quote}{escaped}{quote}"


def _coupon_ref(discount: Any) -> tuple[str | None, StripeDict | None]:
    """The coupon id (and the coupon itself when already expanded) a discount dict refers to."""
    if not isinstance(discount, dict):
        return None, None
    source = discount.get("source")
    coupon = source.get("coupon") if isinstance(source, dict) else None
    if coupon is None:
        coupon = discount.get("coupon")  # API versions before 2025-09-30.clover
    if isinstance(coupon, str):
        return coupon, None
    if isinstance(coupon, dict) and isinstance(coupon.get("id"), str):
        return coupon["id"], coupon
    return None, None


async def _concurrently(*calls: Awaitable[T]) -> list[T]:
    """Run calls concurrently; on the first failure cancel the rest and raise that failure as is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(call)) for call in calls]
    except BaseExceptionGroup as group_error:
        raise _first_leaf(group_error) from None
    return [task.result() for task in tasks]


A = TypeVar("A")
B = TypeVar("B")


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Two calls of different types concurrently, with ``_concurrently``'s failure handling."""
    try:
        async with asyncio.TaskGroup() as group:
            task_a = group.create_task(_as_coroutine(first))
            task_b = group.create_task(_as_coroutine(second))
    except BaseExceptionGroup as group_error:
        raise _first_leaf(group_error) from None
    return task_a.result(), task_b.result()


async def _as_coroutine(call: Awaitable[T]) -> T:
    return await call


def _first_leaf(error: BaseExceptionGroup[BaseException]) -> BaseException:
    first = error.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# --- the gateway ---------------------------------------------------------------------------------


@dataclass
class GatewayStats:
    """What the gateway did, read by ``/metrics``: requests by outcome (``ok`` or the error's type)
    and the seconds spent waiting for the rate budget."""

    requests: dict[str, int] = field(default_factory=dict)
    rate_limit_wait_seconds: float = 0.0

    def count(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1


class StripeGateway:
    """Read-only Stripe access for one API key; build once, share, and ``await aclose()`` at the end."""

    def __init__(
        self,
        api_key: str | None,
        *,
        api_base: str | None = None,
        allow_secret_key: bool = False,
        rate_limit: float | None = None,
        timeout_seconds: float = 10.0,
        retry: RetryPolicy | None = None,
        cache_ttl_seconds: float = 600.0,
        cache_size: int = 2048,
    ) -> None:
        self._key = check_api_key(api_key, allow_secret_key=allow_secret_key)
        self.livemode = key_livemode(self._key)
        self._retry = retry or RetryPolicy()
        self._limiter: RateLimiter = TokenBucket(rate_limit or (LIVE_RATE if self.livemode else TEST_RATE))
        self._search_limiter: RateLimiter = TokenBucket(min(SEARCH_RATE, self._limiter.rate))
        self._timeout_seconds = timeout_seconds
        self._api_base = api_base
        self._sdk: tuple[Any, Any] | None = None  # (HTTPXClient, StripeClient), made by the first request
        self._prices: TTLCache[str, StripeDict] = TTLCache(cache_size, cache_ttl_seconds)
        self._coupons: TTLCache[str, StripeDict] = TTLCache(cache_size, cache_ttl_seconds)
        self._products: TTLCache[str, StripeDict] = TTLCache(cache_size, cache_ttl_seconds)
        self._products_listed_at: float | None = None
        self._products_lock = asyncio.Lock()
        self._cache_ttl = cache_ttl_seconds
        self._tenant: Tenant | None = None
        self.stats = GatewayStats()
        self._cards_readable = True
        self.preview_denied_recheck = PREVIEW_DENIED_RECHECK_SECONDS
        self._preview_denied_at: float | None = None  # monotonic time of the last 403 on a preview
        self._account_asked = False
        self._account_id: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> StripeGateway:
        secret = settings.stripe_api_key
        options: dict[str, Any] = {
            "api_base": settings.stripe_api_base,
            "allow_secret_key": settings.allow_secret_key,
            "rate_limit": settings.stripe_rate_limit,
            "timeout_seconds": settings.stripe_timeout_seconds,
            "retry": RetryPolicy(attempts=max(1, settings.stripe_max_retries + 1)),
        }
        options.update(overrides)
        return cls(secret.get_secret_value() if secret is not None else None, **options)

    @property
    def _client(self) -> Any:
        """The SDK's client, built on first use (importing the SDK: see ``_LazyStripe``)."""
        if self._sdk is None:
            http = stripe.HTTPXClient(timeout=self._timeout_seconds)
            # Our retry policy (full jitter, 429 included) is the only one: the SDK's would multiply it.
            client = stripe.StripeClient(
                self._key,
                base_addresses={"api": self._api_base.rstrip("/")} if self._api_base else None,
                max_network_retries=0,
                http_client=http,
            )
            self._sdk = (http, client)
        return self._sdk[1]

    async def aclose(self) -> None:
        if self._sdk is not None:
            await self._sdk[0].close_async()

    async def __aenter__(self) -> StripeGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:  # never show the key
        return f"StripeGateway(livemode={self.livemode})"

    @property
    def limiter(self) -> RateLimiter:
        """The account's request budget every request waits on."""
        return self._limiter

    @property
    def search_limiter(self) -> RateLimiter:
        """The Search API's own budget (20 reads/s), waited on before the account's by each search."""
        return self._search_limiter

    def share_limits(self, client: Any, key_prefix: str) -> None:
        """Share the account's budget and search's with every process using the same Redis and tenant
        (``key_prefix``, e.g. ``RedisStore.tenant_key("ratelimit")``): ``serve``, ``worker`` and
        ``backfill`` together then keep to one rate. The local buckets stay as the fallback for when
        Redis does not answer. Without Redis (a CLI lookup before the store opens, ``memory://``) the
        gateway keeps its local buckets: a single process."""
        if type(client).__module__.startswith("fakeredis"):
            return  # in-process Redis: one process, nothing to share
        for name in ("_limiter", "_search_limiter"):
            current = getattr(self, name)
            local = current.fallback if isinstance(current, SharedRateLimit) else current
            assert isinstance(local, TokenBucket)
            bucket = "general" if name == "_limiter" else "search"
            setattr(self, name, SharedRateLimit(client, f"{key_prefix}:{bucket}", local))

    # -- the one way a request goes out -----------------------------------------------------------

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], *, search: bool = False) -> T:
        """Rate-limit, retry transient failures, and turn failures into one clear sentence.

        ``search``: a Search API request, which spends search's own budget and the account's.
        """
        policy = self._retry
        background = _BACKGROUND.get()
        limiters = (self._search_limiter, self._limiter) if search else (self._limiter,)

        def attempts_for(err: BaseException | None) -> int:
            if isinstance(err, stripe.RateLimitError):
                return policy.attempts_after_rate_limit(background=background)
            return policy.attempts

        def outcome_error(state: RetryCallState) -> BaseException | None:
            return state.outcome.exception() if state.outcome else None

        def stop(state: RetryCallState) -> bool:
            return state.attempt_number >= attempts_for(outcome_error(state))

        def wait(state: RetryCallState) -> float:
            err = outcome_error(state)
            if isinstance(err, stripe.RateLimitError):
                return policy.wait_after_rate_limit(state.attempt_number, _retry_after(err))
            ceiling = min(policy.cap_seconds, policy.base_seconds * 2 ** (state.attempt_number - 1))
            return random.uniform(0, ceiling)

        def log_retry(state: RetryCallState) -> None:
            err = outcome_error(state)
            reason = _header(err, "Stripe-Rate-Limited-Reason") if err is not None else None
            log.warning(
                "Stripe %s failed (%s%s), attempt %d of %d; retrying",
                what, _reason(err) if err else "?", f": {reason}" if reason else "",
                state.attempt_number, attempts_for(err),
            )

        async def attempt() -> T:
            waited = time.monotonic()
            await _acquire_all(*limiters)
            self.stats.rate_limit_wait_seconds += time.monotonic() - waited
            try:
                result = await call()
            except Exception as err:
                self.stats.count(type(err).__name__)
                raise
            self.stats.count("ok")
            return result

        from tenacity import AsyncRetrying, retry_if_exception

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(is_transient),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            return await retrying(attempt)
        except stripe.AuthenticationError:
            raise ConfigurationError(_BAD_KEY_401) from None
        except stripe.StripeError as err:
            if is_transient(err):
                raise StripeUnavailableError(
                    f"Stripe did not answer {what} after {attempts_for(err)} attempts "
                    f"({_reason(err)}); try again shortly."
                ) from None
            raise

    def _service(self, resource: ListableResource) -> Any:
        return getattr(self._client.v1, resource)

    async def _list_page(self, resource: ListableResource, params: Mapping[str, Any]) -> StripeDict:
        """One list page as the JSON Stripe sent (``data``, ``has_more``). The SDK's StripeObjects are
        skipped: building them and turning them back into dicts was a third of a backfill's CPU."""
        path = f"/v1/{resource}"
        try:
            response = await self._call(
                f"listing {resource}", lambda: self._client.raw_request_async("get", path, **params)
            )
        except stripe.PermissionError as err:
            missing = _missing_permission(err, resource)
            raise ConfigurationError(_permission_sentence([missing], [resource])) from None
        page: StripeDict = _json_shaped(response.data)
        return page

    async def iter_objects(
        self, resource: ListableResource, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[StripeDict]:
        """Every object of a list endpoint, page by page (cursor pagination, rate-limited, retried)."""
        query = {"limit": LIST_LIMIT, **(params or {})}
        while True:
            page = await self._list_page(resource, query)
            data: list[StripeDict] = page["data"]
            for obj in data:
                yield obj
            if not page.get("has_more") or not data:
                return
            query = {**query, "starting_after": data[-1]["id"]}

    async def _list_all(
        self, resource: ListableResource, params: Mapping[str, Any], *, max_pages: int | None = None
    ) -> list[StripeDict]:
        out: list[StripeDict] = []
        query = {"limit": LIST_LIMIT, **params}
        pages = 0
        while True:
            page = await self._list_page(resource, query)
            pages += 1
            data: list[StripeDict] = page["data"]
            out.extend(data)
            if not page.get("has_more") or not data or (max_pages is not None and pages >= max_pages):
                return out
            query = {**query, "starting_after": data[-1]["id"]}

    async def retrieve(self, resource: ListableResource, object_id: str) -> StripeDict | None:
        """One object by id; None when Stripe has no such object. A deleted object keeps ``deleted``."""
        service = self._service(resource)
        params = {"expand": list(_INCLUDABLE[resource])} if resource in _INCLUDABLE else None
        try:
            obj = await self._call(
                f"retrieving {resource}", lambda: service.retrieve_async(object_id, params=params)
            )
        except stripe.InvalidRequestError as err:
            if err.http_status == 404:
                return None
            raise
        except stripe.PermissionError as err:
            raise _refused(err, resource) from None
        return _to_dict(obj)

    # -- account and key checks ----------------------------------------------------------------

    async def named_account(self) -> str | None:
        """The ``acct_…`` Stripe names for this key, asked once: GET /v1/account, or the 403 a
        restricted key gets there ("… on account 'acct_…'"); None when nothing names it."""
        if not self._account_asked:
            try:
                account = await self._call(
                    "reading the account", lambda: self._client.v1.accounts.retrieve_current_async()
                )
                self._account_id = str(account.id)
            except stripe.PermissionError as err:
                self._account_id = account_named_in(str(err))
            except stripe.InvalidRequestError:
                pass  # no /v1/account here (a Stripe-compatible server): nothing names the account
            self._account_asked = True
        return self._account_id

    async def tenant(self) -> Tenant:
        """The account the key belongs to, asked of Stripe once.

        A restricted key usually may not read ``/v1/account``, but Stripe's 403 names the account
        ("… for this endpoint on account 'acct_…'"). Only when nothing names it is the tenant derived
        from the key, with a warning: rolling that key would start an empty cache.
        """
        if self._tenant is None:
            account_id = await self.named_account()
            if account_id is None:
                account_id = key_account_id(self._key)
                log.warning(
                    "Stripe did not name the account of this key (it may not read /v1/account), so the "
                    "cache is keyed by the key itself and a key roll would start it empty; set "
                    "STRIPE_ACCOUNT_ID=acct_… (Dashboard → Settings → Account details) to keep it."
                )
            self._tenant = Tenant(account_id=account_id, livemode=self.livemode)
        return self._tenant

    async def ping(self) -> None:
        """One real request, never retried, for health checks (the caller bounds its time): returns
        when Stripe answered GET /v1/account, a restricted key's 403 included. Raises
        ConfigurationError for a refused key (401), StripeUnavailableError for anything else."""
        await self._limiter.acquire()
        try:
            await self._client.v1.accounts.retrieve_current_async()
        except (stripe.PermissionError, stripe.InvalidRequestError):
            return  # Stripe answered; the key just may not read the account
        except stripe.AuthenticationError:
            raise ConfigurationError(_BAD_KEY_401) from None
        except stripe.StripeError as err:
            raise StripeUnavailableError(f"Stripe is unavailable ({_reason(err)}).") from None

    async def verify_permissions(self) -> None:
        """One ``limit=1`` read per needed resource, concurrently; a missing permission is one sentence."""

        async def probe(resource: ListableResource) -> str | None:
            service = self._service(resource)
            try:
                await self._call(
                    f"checking {resource}", lambda: service.list_async(params={"limit": 1})
                )
            except stripe.PermissionError as err:
                return _missing_permission(err, resource)
            return None

        resources = list(PERMISSIONS)
        results = await asyncio.gather(*(probe(r) for r in resources), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, stripe.StripeError):
                raise result
        missing = {r: result for r, result in zip(resources, results, strict=True) if isinstance(result, str)}
        if missing:
            raise ConfigurationError(_permission_sentence(missing.values(), missing.keys()))
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # -- finding customers ----------------------------------------------------------------------

    def _cards(self, *paths: str) -> list[str]:
        """The default-card expansions, while the key may read payment methods."""
        return list(paths) if self._cards_readable else []

    async def _card_fallback(self, run: Callable[[], Awaitable[T]]) -> T:
        """Run a request that expands default cards; when the key may not read payment methods (a
        403 naming ``rak_payment_method_read``), run it again without them, and stop asking."""
        try:
            return await run()
        except (stripe.PermissionError, ConfigurationError) as err:  # listing turns a 403 into a sentence
            if "payment_method" not in str(err):
                raise
        if self._cards_readable:  # concurrent requests may all have been refused: warn once
            self._cards_readable = False
            log.warning("The Stripe key may not read payment methods (rak_payment_method_read): cards "
                        "show no payment method until it may.")
        return await run()

    async def list_customers_by_email(self, email: str) -> list[StripeDict]:
        """Exact, case-sensitive ``customers.list(email=…)``, each with ``subscriptions`` expanded."""
        def customers() -> Awaitable[list[StripeDict]]:
            expand = ["data.subscriptions", *self._cards(f"data.{CUSTOMER_CARD}")]
            return self._list_all("customers", {"email": email, "expand": expand}, max_pages=1)

        found = await self._card_fallback(customers)
        return [c for c in found if not c.get("deleted")]

    async def search_customers_by_email(self, email: str) -> list[StripeDict]:
        """Search API fallback (eventually consistent), kept to case-insensitive exact matches."""
        customers = await self._search_customers(f"email:{search_string(email)}", repr(email))
        wanted = email.lower()
        return [c for c in customers if str(c.get("email") or "").lower() == wanted]

    async def search_customers_by_metadata(self, key: str, value: str) -> list[StripeDict]:
        """Customers whose metadata ``key`` is exactly ``value`` (``metadata['user_id']:'1234'``, Search
        API: eventually consistent; its matches are kept to exact, case-sensitive equality)."""
        query = f"metadata[{search_string(key)}]:{search_string(value)}"
        customers = await self._search_customers(query, f"{key}:{value!r}")
        return [c for c in customers if (c.get("metadata") or {}).get(key) == value]

    async def _search_customers(self, query: str, shown: str) -> list[StripeDict]:
        """Customers (not deleted, ``subscriptions`` expanded) matching a search ``query``; [] where
        search is unavailable (e.g. merchants in India). ``shown`` names the query in an error."""
        def params() -> Any:
            return {"query": query, "limit": LIST_LIMIT,
                    "expand": ["data.subscriptions", *self._cards(f"data.{CUSTOMER_CARD}")]}

        try:
            result = await self._card_fallback(lambda: self._call(
                "searching customers", lambda: self._client.v1.customers.search_async(params=params()),
                search=True,
            ))
        except stripe.PermissionError as err:
            raise _refused(err, "customers") from None
        except stripe.InvalidRequestError as err:
            if err.http_status == 400 and getattr(err, "param", None) == "query":
                # Stripe could not read the query: a malformed query is not "no match".
                raise BadQueryError(
                    f"Stripe's customer search refused the query for {shown}: "
                    f"{(err.user_message or str(err)).strip()}"
                ) from None
            # Search is unavailable to some accounts (e.g. merchants in India): no fallback, no match.
            log.info("Stripe customer search unavailable (HTTP %s)", err.http_status)
            return []
        customers = [_to_dict(obj) for obj in result.data]
        return [c for c in customers if not c.get("deleted")]

    async def customers_of_invoice_number(self, number: str) -> list[str]:
        """The customers of the invoices numbered ``number`` (``GET /v1/invoices/search`` with
        ``number:"…"``; eventually consistent, spends search's own budget), exact matches only
        (numbers compared upper-cased, as Stripe prints them), in Stripe's order."""
        query = "number:" + search_string(number, quote='"')
        try:
            response = await self._call(
                "searching invoices",
                lambda: self._client.raw_request_async("get", "/v1/invoices/search", query=query, limit=10),
                search=True,
            )
        except stripe.PermissionError as err:
            raise _refused(err, "invoices") from None
        except stripe.InvalidRequestError as err:
            log.info("Stripe invoice search unavailable (HTTP %s)", err.http_status)
            return []
        page: StripeDict = _json_shaped(response.data)
        owners = (
            id_of(inv.get("customer")) for inv in page.get("data") or []
            if isinstance(inv, dict) and str(inv.get("number") or "").upper() == number.upper()
        )
        return list(dict.fromkeys(o for o in owners if o))

    async def owner_of(self, kind: str, object_id: str) -> str | None:
        """The customer id a subscription, invoice, charge or payment intent belongs to (``kind`` as in
        ``OWNED_OBJECTS``); None when Stripe has no such object or it has no customer.

        A key that may not read payment intents (``rak_payment_intent_read`` is not among the
        permissions the product asks for) finds the intent's customer through its charges instead."""
        path, permission = OWNED_OBJECTS[kind]
        what = kind.replace("_", " ")
        try:
            response = await self._call(
                f"retrieving a {what}",
                lambda: self._client.raw_request_async("get", f"/v1/{path}/{object_id}"),
            )
        except stripe.InvalidRequestError as err:
            if err.http_status == 404:
                _refuse_other_mode(err, what, object_id)
                return None
            raise
        except stripe.PermissionError as err:
            if kind == "payment_intent":
                charges = await self._list_all(
                    "charges", {"payment_intent": object_id, "limit": 1}, max_pages=1
                )
                return id_of(charges[0].get("customer")) if charges else None
            found = _PERMISSION_IN_MESSAGE.search(str(err))
            raise ConfigurationError(
                _permission_sentence([found.group(0) if found else permission], [path])
            ) from None
        obj: StripeDict = _json_shaped(response.data)
        return None if obj.get("deleted") else id_of(obj.get("customer"))

    async def retrieve_customer(
        self, customer_id: str, *, refuse_other_mode: bool = False
    ) -> StripeDict | None:
        """The customer with ``subscriptions`` expanded, or None when missing or deleted.

        ``refuse_other_mode`` (a lookup by the id someone typed): an id Stripe says exists under the
        other mode's key raises BadQueryError saying so, as ``owner_of`` does for the other ids; the
        worker keeps None, since for it the customer is simply not in this key's data."""
        try:
            obj = await self._card_fallback(lambda: self._call(
                "retrieving a customer",
                lambda: self._client.v1.customers.retrieve_async(
                    customer_id, params={"expand": ["subscriptions", *self._cards(CUSTOMER_CARD)]}
                ),
            ))
        except stripe.InvalidRequestError as err:
            if err.http_status == 404:
                if refuse_other_mode:
                    _refuse_other_mode(err, "customer", customer_id)
                return None
            raise
        except stripe.PermissionError as err:
            raise _refused(err, "customers") from None
        customer = _to_dict(obj)
        return None if customer.get("deleted") else customer

    # -- reference data (cached) ----------------------------------------------------------------

    async def price_with_tiers(self, price_id: str) -> StripeDict:
        """The price with its includable fields (tiers, currency options), cached."""
        cached = self._prices.get(price_id)
        if cached is not None:
            return cached
        price = await self.retrieve("prices", price_id)
        if price is None:
            raise StripeUnavailableError(f"Stripe has no price {price_id} that a subscription uses.")
        self._prices.set(price_id, price)
        return price

    async def coupon(self, coupon_id: str) -> StripeDict | None:
        return await self._retrieve_cached(self._coupons, "coupons", coupon_id)

    async def product(self, product_id: str) -> StripeDict | None:
        """Products are few: list them all once per cache period, then fetch stragglers by id."""
        async with self._products_lock:
            listed = self._products_listed_at
            if listed is None or time.monotonic() - listed > self._cache_ttl:
                async for product in self.iter_objects("products", {}):
                    self._products.set(product["id"], product)
                self._products_listed_at = time.monotonic()
        return await self._retrieve_cached(self._products, "products", product_id)

    async def _retrieve_cached(
        self, cache: TTLCache[str, StripeDict], resource: ListableResource, object_id: str
    ) -> StripeDict | None:
        cached = cache.get(object_id)
        if cached is not None:
            return cached
        found = await self.retrieve(resource, object_id)
        if found is not None:
            cache.set(object_id, found)
        return found

    # -- one customer's data --------------------------------------------------------------------

    async def fetch_customer_data(self, customer: StripeDict) -> CustomerData:
        """Subscriptions, invoices and charges concurrently; then only the extras this customer needs."""
        customer_id = str(customer["id"])
        # The customer came with its live subscriptions expanded: their previews go out with the lists.
        embedded = (customer.get("subscriptions") or {}).get("data") if isinstance(
            customer.get("subscriptions"), dict
        ) else None
        early = [s for s in embedded or [] if isinstance(s, dict) and isinstance(s.get("id"), str)]
        def subscriptions_list() -> Awaitable[list[StripeDict]]:
            return self._list_all("subscriptions", {
                "customer": customer_id,
                "status": "all",
                "expand": ["data.discounts", "data.items.data.discounts",
                           *self._cards("data.default_payment_method")],
            })

        (subscriptions, invoices, charges), previews = await _both(_concurrently(
            self._card_fallback(subscriptions_list),
            self._list_all("invoices", {"customer": customer_id}, max_pages=1),
            self._list_all("charges", {"customer": customer_id}),
        ), self.preview_next_invoices(early))
        late = [s for s in subscriptions if s.get("id") not in previews and embedded is None]
        if late:
            previews.update(await self.preview_next_invoices(late))
        subscriptions = with_previews(subscriptions, previews)
        disputed = [str(c["id"]) for c in charges if c.get("disputed")]
        # Credit notes only matter to LTV (out-of-band refunds); ask for them when an invoice says it has
        # some, or when older invoices were not listed and might.
        credited = len(invoices) >= LIST_LIMIT or any(
            (inv.get("post_payment_credit_notes_amount") or 0) > 0
            or (inv.get("pre_payment_credit_notes_amount") or 0) > 0
            for inv in invoices
        )

        async def disputes() -> list[StripeDict]:
            pages = await _concurrently(*(self._list_all("disputes", {"charge": c}) for c in disputed))
            return [d for page in pages for d in page]

        async def credit_notes() -> list[StripeDict]:
            return await self._list_all("credit_notes", {"customer": customer_id}) if credited else []

        (dispute_list, note_list), (coupons, prices, products) = await _both(
            _both(disputes(), credit_notes()),
            self._reference_data(customer, subscriptions),
        )
        return CustomerData(
            customer=customer,
            subscriptions=subscriptions,
            invoices=invoices,
            charges=charges,
            disputes=dispute_list,
            credit_notes=note_list,
            coupons=coupons,
            prices=prices,
            products=products,
        )

    async def preview_next_invoice(self, subscription_id: str) -> StripeDict | None:
        """Stripe's preview of the subscription's next invoice (``POST /v1/invoices/create_preview``:
        read-only, creates nothing; needs ``rak_invoice_read``). None when the key may not preview
        (403: the card then shows an estimate; not asked again for ``preview_denied_recheck`` seconds)
        or Stripe has no upcoming invoice for it."""
        denied_at = self._preview_denied_at
        if denied_at is not None and time.monotonic() - denied_at < self.preview_denied_recheck:
            return None
        try:  # as JSON, like list pages: a backfill previews every renewing subscription
            response = await self._call(
                "previewing the next invoice",
                lambda: self._client.raw_request_async(
                    "post", "/v1/invoices/create_preview", subscription=subscription_id
                ),
            )
        except stripe.PermissionError:
            if self._preview_denied_at is None:  # concurrent previews may all be refused: said once
                log.warning("the key may not preview invoices (%s): next invoices are estimated; asked "
                            "again in %.0f s", PREVIEW_PERMISSION, self.preview_denied_recheck)
            self._preview_denied_at = time.monotonic()
            return None
        except stripe.InvalidRequestError as err:
            log.info("no invoice preview for %s (HTTP %s)", subscription_id, err.http_status)
            return None
        self._preview_denied_at = None
        preview: StripeDict = _json_shaped(response.data)
        return preview

    async def preview_next_invoices(
        self, subscriptions: Iterable[StripeDict]
    ) -> dict[str, StripeDict | None]:
        """Previews of every subscription that will invoice again (active, trialing, past_due, not
        ending first), concurrently, by subscription id.

        The worker's hook for refreshing next invoices on subscription and invoice events:
        ``with_previews(subscriptions, await gateway.preview_next_invoices(subscriptions))``.
        """
        wanted = sorted({
            str(s["id"]) for s in subscriptions
            if s.get("status") in PREVIEWED_STATUSES and not s.get("cancel_at_period_end")
            and isinstance(s.get("id"), str)
        })
        found = await _concurrently(*(self.preview_next_invoice(sub_id) for sub_id in wanted))
        return dict(zip(wanted, found, strict=True))

    async def _reference_data(
        self, customer: StripeDict, subscriptions: list[StripeDict]
    ) -> tuple[dict[str, StripeDict], dict[str, StripeDict], dict[str, StripeDict]]:
        """Coupons behind every discount, tiered prices with tiers, and the products that name a plan."""
        discounts: list[Any] = [customer.get("discount")]
        prices: dict[str, StripeDict] = {}
        tiered: set[str] = set()
        product_ids: set[str] = set()
        for sub in subscriptions:
            discounts.extend(sub.get("discounts") or [])
            for item in (sub.get("items") or {}).get("data") or []:
                discounts.extend(item.get("discounts") or [])
                price = item.get("price") or item.get("plan")
                if not isinstance(price, dict) or not isinstance(price.get("id"), str):
                    continue
                prices[price["id"]] = price
                if price.get("billing_scheme") == "tiered" and not price.get("tiers"):
                    tiered.add(price["id"])
                # Billed in another currency than the price's default: its currency_options say how much.
                sub_currency, price_currency = sub.get("currency"), price.get("currency")
                if sub_currency and price_currency and sub_currency != price_currency:
                    tiered.add(price["id"])
                # A product only names a plan whose price has no nickname: no request otherwise.
                product_id = id_of(price.get("product"))
                if product_id and not price.get("nickname"):
                    product_ids.add(product_id)

        coupons: dict[str, StripeDict] = {}
        coupon_ids: set[str] = set()
        for discount in discounts:
            coupon_id, expanded = _coupon_ref(discount)
            if coupon_id and expanded is not None:
                coupons[coupon_id] = expanded
            elif coupon_id:
                coupon_ids.add(coupon_id)
        coupon_ids -= coupons.keys()

        async def fetch(kind: str, object_id: str) -> tuple[str, str, StripeDict | None]:
            if kind == "coupon":
                return kind, object_id, await self.coupon(object_id)
            if kind == "price":
                return kind, object_id, await self.price_with_tiers(object_id)
            return kind, object_id, await self.product(object_id)

        wanted = (
            [("coupon", c) for c in sorted(coupon_ids)]
            + [("price", p) for p in sorted(tiered)]
            + [("product", p) for p in sorted(product_ids)]
        )
        products: dict[str, StripeDict] = {}
        by_kind = {"coupon": coupons, "price": prices, "product": products}
        for kind, object_id, found in await _concurrently(*(fetch(k, i) for k, i in wanted)):
            if found is not None:
                by_kind[kind][object_id] = found
        return coupons, prices, products
