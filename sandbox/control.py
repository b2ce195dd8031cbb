"""``SandboxControl``: a small sync client for the ``/_sandbox`` control API; returns plain dicts."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx


class SandboxControlError(RuntimeError):
    """A control call the sandbox refused; the message is the sandbox's own sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"sandbox control error {status}: {message}")
        self.status = status


class SandboxControl:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        # One connection per call: the server closes idle keep-alive connections after a few seconds,
        # and a call made on one it just closed would fail with "Server disconnected".
        self._http = httpx.Client(base_url=f"{self.url}/_sandbox", timeout=timeout,
                                  limits=httpx.Limits(max_keepalive_connections=0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        response = self._http.request(method, path, json=body, params=params)
        data: dict[str, Any] = response.json()
        if response.status_code >= 400:
            raise SandboxControlError(response.status_code, str(data.get("error", {}).get("message", data)))
        return data

    # ---- world --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status")

    def reset(self, dataset: str = "demo", now: int | None = None) -> dict[str, Any]:
        return self._call("POST", "/reset", {"dataset": dataset, "now": now})

    def load(self, objects: list[dict[str, Any]], emit_events: bool = False) -> dict[str, Any]:
        """Insert or replace Stripe-shaped objects; with ``emit_events`` record ``*.created|updated``."""
        return self._call("POST", "/objects", {"objects": objects, "emit_events": emit_events})

    def get(self, object_id: str) -> dict[str, Any]:
        """Any object by id, as the API renders it, whatever its mode."""
        return self._call("GET", "/object", params={"id": object_id})

    def update(self, object_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Replace top-level fields; records ``<type>.updated`` with ``previous_attributes``."""
        return self._call("POST", "/update", {"id": object_id, "changes": changes})

    def delete(self, object_id: str) -> dict[str, Any]:
        return self._call("POST", "/delete", {"id": object_id})

    def set_subscription_status(self, subscription_id: str, status: str) -> dict[str, Any]:
        return self._call("POST", "/subscription_status", {"id": subscription_id, "status": status})

    def trial_will_end(self, subscription_id: str) -> dict[str, Any]:
        return self._call("POST", "/trial_will_end", {"id": subscription_id})

    def fail_invoice(self, invoice_id: str) -> dict[str, Any]:
        return self._call("POST", "/fail_invoice", {"id": invoice_id})

    def pay_invoice(self, invoice_id: str) -> dict[str, Any]:
        return self._call("POST", "/pay_invoice", {"id": invoice_id})

    def create_charge(
        self,
        customer: str,
        amount: int,
        currency: str = "usd",
        status: str = "succeeded",
        description: str | None = None,
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            "/charges",
            {
                "customer": customer,
                "amount": amount,
                "currency": currency,
                "status": status,
                "description": description,
            },
        )

    def refund_charge(self, charge_id: str, amount: int | None = None) -> dict[str, Any]:
        return self._call("POST", "/refund_charge", {"id": charge_id, "amount": amount})

    def emit(
        self, event_type: str, object_id: str, previous_attributes: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record an arbitrary event about an existing object (e.g. ``customer.subscription.paused``)."""
        return self._call(
            "POST", "/emit", {"type": event_type, "id": object_id, "previous_attributes": previous_attributes}
        )

    # ---- webhooks -----------------------------------------------------------------------------
    def register_webhook(
        self, url: str, secret: str | None = None, livemode: bool | None = None
    ) -> dict[str, Any]:
        """Returns ``{"id", "url", "secret", "livemode"}``; a secret is generated when not given."""
        return self._call("POST", "/webhooks", {"url": url, "secret": secret, "livemode": livemode})

    def clear_webhooks(self) -> dict[str, Any]:
        return self._call("DELETE", "/webhooks")

    def set_webhook_mode(self, mode: str) -> dict[str, Any]:
        """``sync`` (control calls return after delivery) or ``background``."""
        return self._call("POST", "/webhooks/mode", {"mode": mode})

    def deliveries(self, event_id: str | None = None) -> list[dict[str, Any]]:
        params = {"event_id": event_id} if event_id else None
        result: list[dict[str, Any]] = self._call("GET", "/webhooks/deliveries", params=params)["deliveries"]
        return result

    def deliver(
        self,
        event_ids: list[str],
        times: int = 1,
        endpoint_id: str | None = None,
        timestamp: int | None = None,
    ) -> dict[str, Any]:
        """Deliver these events in this order, each ``times`` times (``timestamp`` signs with an old t)."""
        return self._call(
            "POST",
            "/webhooks/deliver",
            {"event_ids": event_ids, "times": times, "endpoint_id": endpoint_id, "timestamp": timestamp},
        )

    def redeliver(self, event_id: str, endpoint_id: str | None = None) -> dict[str, Any]:
        return self.deliver([event_id], endpoint_id=endpoint_id)

    def redeliver_failed(self) -> dict[str, Any]:
        return self._call("POST", "/webhooks/redeliver_failed")

    # ---- observation and faults ---------------------------------------------------------------
    def requests(self) -> list[dict[str, Any]]:
        """Every ``/v1`` request since the last clear: method, path, query, status, mode."""
        result: list[dict[str, Any]] = self._call("GET", "/requests")["requests"]
        return result

    def in_flight(self) -> int:
        """How many ``/v1`` requests the sandbox has received and not yet answered."""
        return int(self._call("GET", "/requests")["in_flight"])

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def set_faults(
        self,
        *,
        latency_ms: float = 0,
        rate_limit_every: int = 0,
        rate_limit_probability: float = 0,
        should_retry: bool = False,
        error_probability: float = 0,
        error_status: int = 500,
        error_every: int = 0,
        path_prefix: str | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        return self._call(
            "POST",
            "/faults",
            {
                "latency_ms": latency_ms,
                "rate_limit_every": rate_limit_every,
                "rate_limit_probability": rate_limit_probability,
                "should_retry": should_retry,
                "error_probability": error_probability,
                "error_status": error_status,
                "error_every": error_every,
                "path_prefix": path_prefix,
                "seed": seed,
            },
        )

    def clear_faults(self) -> dict[str, Any]:
        return self._call("DELETE", "/faults")

    def set_key_permissions(self, key: str, permissions: list[str] | None) -> dict[str, Any]:
        """Only these ``rak_*`` permissions for ``key``; ``None`` restores full access."""
        return self._call("POST", "/keys/permissions", {"key": key, "permissions": permissions})

    def revoke_key(self, key: str) -> dict[str, Any]:
        return self._call("POST", "/keys/revoke", {"key": key})

    def clock(self) -> dict[str, Any]:
        return self._call("GET", "/clock")

    def set_clock(self, now: float | None, frozen: bool = True) -> dict[str, Any]:
        """Freeze the sandbox clock at ``now`` (or let it run from there); ``None`` is real time."""
        return self._call("POST", "/clock", {"now": now, "frozen": frozen})

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        return self._call("POST", "/clock/advance", {"seconds": seconds})
