"""``/_sandbox/…``: the control API tests use to shape the world (no auth, loopback only)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import mutations
from sandbox.core import Sandbox
from sandbox.errors import StripeError
from sandbox.events import Endpoint
from sandbox.faults import FaultConfig
from sandbox.state import Obj

Handler = Callable[[Sandbox, dict[str, Any]], Awaitable[Any]]
LOOPBACK = ("127.", "::1", "localhost")


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise StripeError(400, f"Missing required field {name!r}.", param=name)
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise StripeError(400, f"Field {name!r} must be {expected}.", param=name)
    return value


def _event_jobs(sandbox: Sandbox, events: list[Obj]) -> list[tuple[Obj, Endpoint]]:
    return [(event, endpoint) for event in events for endpoint in sandbox.webhooks.targets(event)]


async def _mutate(sandbox: Sandbox, run: Callable[[], list[Obj]]) -> dict[str, Any]:
    with sandbox.store.lock:
        events = run()
        jobs = _event_jobs(sandbox, events)
    await sandbox.webhooks.dispatch(jobs)
    return {"events": events}


# ---- handlers ----------------------------------------------------------------------------------
async def reset(sb: Sandbox, body: dict[str, Any]) -> Any:
    return sb.reset(_field(body, "dataset", str, required=False) or "demo", _field(body, "now", int, False))


async def load(sb: Sandbox, body: dict[str, Any]) -> Any:
    objects = _field(body, "objects", list)
    emit = bool(_field(body, "emit_events", bool, required=False))
    result = await _mutate(sb, lambda: mutations.load(sb.store, sb.events, objects, emit))
    result["loaded"] = len(objects)
    return result


async def get_object(sb: Sandbox, body: dict[str, Any]) -> Any:
    object_id = _field(body, "id", str)
    with sb.store.lock:
        obj = sb.store.find(object_id)
        if obj is None:
            raise StripeError(404, f"No such object: '{object_id}'", code="resource_missing", param="id")
        return sb.store.render(obj)


async def update(sb: Sandbox, body: dict[str, Any]) -> Any:
    object_id, changes = _field(body, "id", str), _field(body, "changes", dict)
    return await _mutate(sb, lambda: mutations.update(sb.store, sb.events, object_id, changes))


async def delete(sb: Sandbox, body: dict[str, Any]) -> Any:
    object_id = _field(body, "id", str)
    return await _mutate(sb, lambda: mutations.delete(sb.store, sb.events, object_id))


async def subscription_status(sb: Sandbox, body: dict[str, Any]) -> Any:
    sub_id, status = _field(body, "id", str), _field(body, "status", str)
    return await _mutate(sb, lambda: mutations.set_subscription_status(sb.store, sb.events, sub_id, status))


async def trial_will_end(sb: Sandbox, body: dict[str, Any]) -> Any:
    sub_id = _field(body, "id", str)
    return await _mutate(sb, lambda: mutations.trial_will_end(sb.store, sb.events, sub_id))


async def fail_invoice(sb: Sandbox, body: dict[str, Any]) -> Any:
    invoice_id = _field(body, "id", str)
    return await _mutate(sb, lambda: mutations.fail_invoice(sb.store, sb.events, invoice_id))


async def pay_invoice(sb: Sandbox, body: dict[str, Any]) -> Any:
    invoice_id = _field(body, "id", str)
    return await _mutate(sb, lambda: mutations.pay_invoice(sb.store, sb.events, invoice_id))


async def create_charge(sb: Sandbox, body: dict[str, Any]) -> Any:
    customer, amount = _field(body, "customer", str), _field(body, "amount", int)
    currency = _field(body, "currency", str, required=False) or "usd"
    status = _field(body, "status", str, required=False) or "succeeded"
    description = _field(body, "description", str, required=False)
    return await _mutate(
        sb,
        lambda: mutations.create_charge(sb.store, sb.events, customer, amount, currency, status, description),
    )


async def refund_charge(sb: Sandbox, body: dict[str, Any]) -> Any:
    charge_id, amount = _field(body, "id", str), _field(body, "amount", int, required=False)
    return await _mutate(sb, lambda: mutations.refund_charge(sb.store, sb.events, charge_id, amount))


async def emit_event(sb: Sandbox, body: dict[str, Any]) -> Any:
    event_type, object_id = _field(body, "type", str), _field(body, "id", str)
    previous = _field(body, "previous_attributes", dict, required=False)
    return await _mutate(sb, lambda: mutations.emit(sb.store, sb.events, event_type, object_id, previous))


async def register_webhook(sb: Sandbox, body: dict[str, Any]) -> Any:
    endpoint = sb.webhooks.register(
        _field(body, "url", str),
        _field(body, "secret", str, required=False),
        _field(body, "livemode", bool, required=False),
    )
    return asdict(endpoint)


async def clear_webhooks(sb: Sandbox, body: dict[str, Any]) -> Any:
    sb.webhooks.endpoints.clear()
    return {"endpoints": []}


async def webhook_mode(sb: Sandbox, body: dict[str, Any]) -> Any:
    sb.webhooks.set_mode(_field(body, "mode", str))
    return {"mode": sb.webhooks.mode}


async def deliveries(sb: Sandbox, body: dict[str, Any]) -> Any:
    return {"deliveries": sb.webhooks.results(_field(body, "event_id", str, required=False))}


async def deliver(sb: Sandbox, body: dict[str, Any]) -> Any:
    """Deliver events in the given order, each ``times`` times (duplicates, out-of-order tests)."""
    event_ids = _field(body, "event_ids", list)
    times = _field(body, "times", int, required=False) or 1
    endpoint_id = _field(body, "endpoint_id", str, required=False)
    timestamp = _field(body, "timestamp", int, required=False)
    with sb.store.lock:
        jobs = []
        for event_id in event_ids:
            event = sb.store.raw("event", str(event_id))
            if event is None:
                raise StripeError(
                    404, f"No such event: '{event_id}'", code="resource_missing", param="event_ids"
                )
            for _ in range(times):
                jobs += [(event, endpoint) for endpoint in sb.webhooks.targets(event, endpoint_id)]
    await sb.webhooks.dispatch(jobs, timestamp)
    return {"delivered": len(jobs)}


async def redeliver_failed(sb: Sandbox, body: dict[str, Any]) -> Any:
    """Stripe's retry: every (event, endpoint) whose latest attempt failed, oldest first."""
    with sb.store.lock:
        jobs = []
        for event_id, endpoint_id in sb.webhooks.failed_event_ids():
            event = sb.store.raw("event", event_id)
            endpoint = sb.webhooks.endpoints.get(endpoint_id)
            if event is not None and endpoint is not None:
                jobs.append((event, endpoint))
    await sb.webhooks.dispatch(jobs)
    return {"redelivered": [event["id"] for event, _ in jobs]}


async def get_requests(sb: Sandbox, body: dict[str, Any]) -> Any:
    return {"requests": list(sb.requests), "in_flight": sb.in_flight}


async def clear_requests(sb: Sandbox, body: dict[str, Any]) -> Any:
    sb.requests.clear()
    return {"requests": []}


async def set_faults(sb: Sandbox, body: dict[str, Any]) -> Any:
    sb.faults.configure(FaultConfig.from_dict(body))
    return sb.faults.describe()


async def clear_faults(sb: Sandbox, body: dict[str, Any]) -> Any:
    sb.faults.configure(FaultConfig())
    return sb.faults.describe()


async def key_permissions(sb: Sandbox, body: dict[str, Any]) -> Any:
    key = _field(body, "key", str)
    sb.keys.set_permissions(key, _field(body, "permissions", list, required=False))
    return {"ok": True}


async def revoke_key(sb: Sandbox, body: dict[str, Any]) -> Any:
    sb.keys.revoked.add(_field(body, "key", str))
    return {"ok": True}


async def clock(sb: Sandbox, body: dict[str, Any]) -> Any:
    if body:
        now = _field(body, "now", (int, float), required=False)
        sb.store.clock.set(now, bool(body.get("frozen", True)))
    return sb.store.clock.describe()


async def advance_clock(sb: Sandbox, body: dict[str, Any]) -> Any:
    sb.store.clock.advance(float(_field(body, "seconds", (int, float))))
    return sb.store.clock.describe()


async def status(sb: Sandbox, body: dict[str, Any]) -> Any:
    with sb.store.lock:
        return {
            "dataset": sb.dataset,
            "counts": sb.store.counts(),
            "clock": sb.store.clock.describe(),
            "webhook_mode": sb.webhooks.mode,
            "faults": sb.faults.describe(),
        }


# ---- plumbing ----------------------------------------------------------------------------------
def _endpoint(sandbox: Sandbox, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        host = request.client.host if request.client else ""
        if not host.startswith(LOOPBACK):
            return JSONResponse(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": "The sandbox control API answers loopback clients only.",
                    }
                },
                status_code=403,
            )
        try:
            body: dict[str, Any] = dict(request.query_params)
            raw = await request.body()
            if raw:
                parsed = json.loads(raw)
                if not isinstance(parsed, dict):
                    raise StripeError(400, "The control API takes a JSON object body.")
                body.update(parsed)
            return JSONResponse(await handler(sandbox, body))
        except json.JSONDecodeError:
            return JSONResponse(
                StripeError(400, "The request body is not valid JSON.").body(), status_code=400
            )
        except StripeError as error:
            return JSONResponse(error.body(), status_code=error.status)
        except TypeError as error:  # unexpected field names in a dataclass-backed body
            return JSONResponse(StripeError(400, f"Bad control request: {error}.").body(), status_code=400)

    return endpoint


_ROUTES: list[tuple[str, str, Handler]] = [
    ("/_sandbox/status", "GET", status),
    ("/_sandbox/reset", "POST", reset),
    ("/_sandbox/objects", "POST", load),
    ("/_sandbox/object", "GET", get_object),
    ("/_sandbox/update", "POST", update),
    ("/_sandbox/delete", "POST", delete),
    ("/_sandbox/subscription_status", "POST", subscription_status),
    ("/_sandbox/trial_will_end", "POST", trial_will_end),
    ("/_sandbox/fail_invoice", "POST", fail_invoice),
    ("/_sandbox/pay_invoice", "POST", pay_invoice),
    ("/_sandbox/charges", "POST", create_charge),
    ("/_sandbox/refund_charge", "POST", refund_charge),
    ("/_sandbox/emit", "POST", emit_event),
    ("/_sandbox/webhooks", "POST", register_webhook),
    ("/_sandbox/webhooks", "DELETE", clear_webhooks),
    ("/_sandbox/webhooks/mode", "POST", webhook_mode),
    ("/_sandbox/webhooks/deliveries", "GET", deliveries),
    ("/_sandbox/webhooks/deliver", "POST", deliver),
    ("/_sandbox/webhooks/redeliver_failed", "POST", redeliver_failed),
    ("/_sandbox/requests", "GET", get_requests),
    ("/_sandbox/requests", "DELETE", clear_requests),
    ("/_sandbox/faults", "POST", set_faults),
    ("/_sandbox/faults", "DELETE", clear_faults),
    ("/_sandbox/keys/permissions", "POST", key_permissions),
    ("/_sandbox/keys/revoke", "POST", revoke_key),
    ("/_sandbox/clock", "GET", clock),
    ("/_sandbox/clock", "POST", clock),
    ("/_sandbox/clock/advance", "POST", advance_clock),
]


def routes(sandbox: Sandbox) -> list[Route]:
    return [Route(path, _endpoint(sandbox, handler), methods=[method]) for path, method, handler in _ROUTES]
