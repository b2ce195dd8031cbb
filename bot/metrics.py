"""Prometheus metrics of one process (``GET /metrics``): lookups, Stripe, webhooks, the stream, alerts,
Slack. One ``Metrics`` per runtime; the core keeps plain counters (``billing`` does not import
prometheus) that collectors read when Prometheus scrapes.

No label ever carries a customer, an email or a secret: labels are surfaces, sources, outcomes and
Stripe event types.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from billing.cache.store import SyncHealth

LOOKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StatsCollector(Collector):
    """Counters kept by an object of the core (``.stats`` with integer fields), read at scrape time."""

    def __init__(self, prefix: str, description: str, source: Any) -> None:
        self._prefix = prefix
        self._description = description
        self._source = source

    def collect(self) -> Iterator[Any]:
        yield from stats_families(self._prefix, self._description, getattr(self._source, "stats", None))


def stats_families(prefix: str, description: str, stats: Any) -> Iterator[Any]:
    """One counter per integer field of ``stats`` (a dict field: one per key), named ``prefix_field``."""
    if stats is None:
        return
    for name, value in vars(stats).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield CounterMetricFamily(f"{prefix}_{name}", f"{description}: {name}.", value=value)
        elif isinstance(value, dict):
            family = CounterMetricFamily(f"{prefix}_{name}", f"{description}: {name}.", labels=["kind"])
            for kind, count in sorted(value.items()):
                family.add_metric([str(kind)], count)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.lookups = Counter("billing_lookups", "Lookups by surface, source of the answer and outcome.",
                               ["surface", "source", "outcome"], registry=self.registry)
        self.lookup_seconds = Histogram("billing_lookup_seconds", "Lookup latency by surface.", ["surface"],
                                        buckets=LOOKUP_BUCKETS, registry=self.registry)
        self.webhook_events = Counter("billing_webhook_events", "Webhook requests by event type and outcome.",
                                      ["type", "outcome"], registry=self.registry)
        self.slack_requests = Counter("billing_slack_requests", "Slack requests by kind.", ["kind"],
                                      registry=self.registry)
        self.stream = Gauge("billing_stream", "The event stream: length, lag, pending, dead letters.",
                            ["what"], registry=self.registry)
        self.customers_cached = Gauge("billing_customers_cached", "Customers in the cache.",
                                      registry=self.registry)
        self.last_webhook_age = Gauge("billing_last_webhook_age_seconds", "Seconds since the last webhook.",
                                      registry=self.registry)
        self.previews_due = Gauge("billing_previews_due",
                                  "Customers whose next-invoice previews wait for a refresh.",
                                  registry=self.registry)
        self.reminders = Gauge("billing_reminders", "The reminder schedule: customers with a moment "
                               "(scheduled) and those whose moment has passed (due).", ["what"],
                               registry=self.registry)
        self.reminders_last_tick_age = Gauge(
            "billing_reminders_last_tick_age_seconds",
            "Seconds since a reminder scheduler last ticked (NaN: never).", registry=self.registry)

    def record_lookup(self, surface: str, source: str, outcome: str, seconds: float) -> None:
        self.lookups.labels(surface, source, outcome).inc()
        self.lookup_seconds.labels(surface).observe(seconds)

    def watch(self, prefix: str, description: str, source: Any) -> None:
        """Export ``source.stats`` (the Stripe gateway's, the worker's) at every scrape."""
        self.registry.register(_StatsCollector(prefix, description, source))

    def update_health(self, health: SyncHealth) -> None:
        self.customers_cached.set(health.customers_cached)
        self.stream.labels("length").set(health.stream_length)
        self.stream.labels("lag").set(health.stream_lag if health.stream_lag is not None else 0)
        self.stream.labels("pending").set(health.pending)
        self.stream.labels("dead_letters").set(health.dead_letters)
        if health.last_webhook_at:
            self.last_webhook_age.set(time.time() - health.last_webhook_at)
        self.previews_due.set(health.previews_due)
        self.reminders.labels("scheduled").set(health.reminders_scheduled)
        self.reminders.labels("due").set(health.reminders_due)
        ticked = health.reminders_last_tick_at
        self.reminders_last_tick_age.set(time.time() - ticked if ticked is not None else float("nan"))


def slack_kind(content_type: str, body: bytes) -> str:
    """``command``, ``interactive``, ``event`` or ``other``, without parsing user text."""
    if content_type.startswith("application/json"):
        return "event"
    if body.startswith(b"payload=") or b"&payload=" in body:
        return "interactive"
    if b"command=" in body:
        return "command"
    return "other"
