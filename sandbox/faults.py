"""Seeded fault injection: latency, 429 rate limiting and 5xx errors, optionally per path prefix."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sandbox.errors import StripeError


@dataclass
class FaultConfig:
    latency_ms: float = 0.0
    rate_limit_every: int = 0  # every Nth matching request answers 429 (0 = never)
    rate_limit_probability: float = 0.0
    should_retry: bool = False  # send ``Stripe-Should-Retry: true`` with 429s
    error_probability: float = 0.0  # chance of a 5xx
    error_status: int = 500
    error_every: int = 0  # every Nth matching request answers error_status (0 = never)
    path_prefix: str | None = None  # e.g. "/v1/subscriptions"; None = every /v1 path
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StripeError(
                400, f"Unknown fault setting {unknown[0]!r}; accepted: {', '.join(sorted(names))}."
            )
        config = cls(**data)
        if not 0 <= config.rate_limit_probability <= 1 or not 0 <= config.error_probability <= 1:
            raise StripeError(400, "Fault probabilities must be between 0 and 1.")
        if not 500 <= config.error_status <= 599:
            raise StripeError(400, "error_status must be a 5xx status code.")
        return config


@dataclass
class Faults:
    config: FaultConfig = field(default_factory=FaultConfig)
    _rng: random.Random = field(default_factory=lambda: random.Random(0))
    _count: int = 0

    def configure(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._count = 0

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)

    def decide(self, path: str) -> tuple[float, StripeError | None]:
        """Latency in seconds and the error to answer with (if any) for this request."""
        config = self.config
        if config.path_prefix is not None and not path.startswith(config.path_prefix):
            return 0.0, None
        self._count += 1
        latency = config.latency_ms / 1000.0
        limited = (config.rate_limit_every > 0 and self._count % config.rate_limit_every == 0) or (
            config.rate_limit_probability > 0 and self._rng.random() < config.rate_limit_probability
        )
        if limited:
            headers = {"Stripe-Should-Retry": "true"} if config.should_retry else {}
            return latency, StripeError(
                429,
                "Request rate limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
                code="rate_limit",
                headers=headers,
            )
        errored = (config.error_every > 0 and self._count % config.error_every == 0) or (
            config.error_probability > 0 and self._rng.random() < config.error_probability
        )
        if errored:
            return latency, StripeError(
                config.error_status,
                "An unknown error occurred (injected by the sandbox).",
                type="api_error",
            )
        return latency, None
