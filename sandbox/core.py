"""One sandbox's whole state: objects, keys, faults, events, webhooks and the request log."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sandbox.auth import KeyRegistry
from sandbox.demo import build as build_demo
from sandbox.errors import StripeError
from sandbox.events import EventLog, Webhooks
from sandbox.faults import Faults
from sandbox.state import Store

ACCOUNT_ID = "acct_1SandboxBillingLens"
REQUEST_LOG_SIZE = 100_000
DATASETS = ("demo", "empty")


@dataclass
class Sandbox:
    store: Store = field(default_factory=Store)
    keys: KeyRegistry = field(default_factory=lambda: KeyRegistry(ACCOUNT_ID))
    faults: Faults = field(default_factory=Faults)
    # Bounded so a long benchmark cannot grow the sandbox without limit; tests read far fewer.
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    dataset: str = "empty"
    # Requests answered by no one yet (a latency fault holds them): tests wait for zero before counting.
    in_flight: int = 0

    def __post_init__(self) -> None:
        self.events = EventLog(self.store)
        self.webhooks = Webhooks(self.store)

    def reset(self, dataset: str, now: int | None = None) -> dict[str, Any]:
        """Back to a known world: the dataset's objects built for ``now`` (default: the real time), a
        real-time clock, and no events, faults, webhooks, logged requests or key rules."""
        if dataset not in DATASETS:
            raise StripeError(
                400, f"Unknown dataset {dataset!r}; accepted: {', '.join(DATASETS)}.", param="dataset"
            )
        with self.store.lock:
            self.store.clear()
            self.store.clock.set(None)
            self.events.reset()
            self.webhooks.reset()
            self.keys.reset()
            self.faults = Faults()
            self.requests.clear()
            self.dataset = dataset
            if dataset == "demo":
                for obj in build_demo(now if now is not None else self.store.clock.now()):
                    self.store.put(obj)
            return {"dataset": dataset, "counts": self.store.counts()}

    def account(self, livemode: bool) -> dict[str, Any]:
        return {
            "id": ACCOUNT_ID,
            "object": "account",
            "business_profile": {"name": "Billing Lens Sandbox", "url": None, "support_email": None},
            "business_type": "company",
            "charges_enabled": True,
            "country": "US",
            "created": 1_600_000_000,
            "default_currency": "usd",
            "details_submitted": True,
            "email": "owner@sandbox.example",
            "metadata": {},
            "payouts_enabled": True,
            "settings": {"dashboard": {"display_name": "Billing Lens Sandbox", "timezone": "Etc/UTC"}},
            "type": "standard",
        }
