"""Mutations record Stripe events; webhooks are delivered signed, recorded, redelivered on demand."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.control import SandboxControlError
from sandbox.server import _free_port
from tests.fixtures_sandbox import SandboxHandle

SECRET = "whsec_testsecret123"


class Receiver:
    """A real HTTP webhook endpoint that records what arrives and answers ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        self.status = 200
        self.port = _free_port("127.0.0.1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[Any]:
        return [stripe.Webhook.construct_event(body.decode(), sig, SECRET) for body, sig in self.received]

    async def hook(self, request: Request) -> Response:
        self.received.append((await request.body(), request.headers["stripe-signature"]))
        return Response(status_code=self.status)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    recv = Receiver()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/hook", recv.hook, methods=["POST"])]),
            host="127.0.0.1",
            port=recv.port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield recv
    server.should_exit = True
    thread.join(5)


@pytest.fixture
def hooked(sandbox: SandboxHandle, receiver: Receiver) -> tuple[SandboxHandle, Receiver]:
    receiver.received.clear()
    receiver.status = 200
    sandbox.control.register_webhook(receiver.url, SECRET)
    return sandbox, receiver


def customer_id(sandbox: SandboxHandle, email: str) -> str:
    client = stripe.StripeClient(sandbox.api_key, base_addresses={"api": sandbox.url})
    return str(client.v1.customers.list(params={"email": email}).data[0].id)


def subscription_of(sandbox: SandboxHandle, email: str) -> dict[str, Any]:
    client = stripe.StripeClient(sandbox.api_key, base_addresses={"api": sandbox.url})
    sub = client.v1.subscriptions.list(
        params={"customer": customer_id(sandbox, email), "status": "all"}
    ).data[0]
    result: dict[str, Any] = sub.to_dict()
    return result


def test_update_records_event_with_previous_attributes_and_delivers_signed(
    hooked: tuple[SandboxHandle, Receiver],
) -> None:
    sandbox, receiver = hooked
    cid = customer_id(sandbox, "nosubs@example.com")
    result = sandbox.control.update(cid, {"name": "Renamed"})
    [event] = result["events"]
    assert event["type"] == "customer.updated"
    assert event["data"]["previous_attributes"] == {"name": "No Subs"}
    assert event["data"]["object"]["name"] == "Renamed"
    assert event["api_version"] == stripe.api_version
    assert event["id"].startswith("evt_") and event["livemode"] is False
    [delivered] = receiver.events()
    assert delivered.id == event["id"] and delivered.type == "customer.updated"
    assert delivered.data.object.name == "Renamed"
    client = stripe.StripeClient(sandbox.api_key, base_addresses={"api": sandbox.url})
    listed = client.v1.events.list(params={"type": "customer.updated"}).data
    assert [e.id for e in listed] == [event["id"]]


def test_signature_is_verifiable_only_with_the_right_secret(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, receiver = hooked
    sandbox.control.update(customer_id(sandbox, "nosubs@example.com"), {"name": "X"})
    body, signature = receiver.received[0]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), signature, "whsec_wrong")
    old = int(time.time()) - 3600
    event_id = json.loads(body)["id"]
    sandbox.control.deliver([event_id], timestamp=old)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(receiver.received[1][0].decode(), receiver.received[1][1], SECRET)


def test_fail_then_pay_invoice(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, receiver = hooked
    sub = subscription_of(sandbox, "bigco@example.com")
    invoice = sandbox.control.load(
        [
            {
                "id": "in_test_open",
                "object": "invoice",
                "customer": sub["customer"],
                "currency": "usd",
                "status": "open",
                "amount_due": 125000,
                "amount_paid": 0,
                "amount_remaining": 125000,
                "attempt_count": 0,
                "parent": {
                    "type": "subscription_details",
                    "subscription_details": {"subscription": sub["id"]},
                },
            }
        ]
    )
    assert invoice["loaded"] == 1
    failed = sandbox.control.fail_invoice("in_test_open")["events"]
    types = [e["type"] for e in failed]
    assert types == [
        "charge.failed",
        "invoice.updated",
        "invoice.payment_failed",
        "customer.subscription.updated",
        "customer.updated",
    ]
    assert failed[2]["data"]["object"]["attempt_count"] == 1
    assert failed[2]["data"]["object"]["next_payment_attempt"] is not None
    assert failed[3]["data"]["object"]["status"] == "past_due"
    assert failed[3]["data"]["previous_attributes"] == {"status": "active"}
    paid = sandbox.control.pay_invoice("in_test_open")["events"]
    assert [e["type"] for e in paid] == [
        "charge.succeeded",
        "invoice.updated",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
        "customer.updated",
    ]
    assert paid[4]["data"]["object"]["status"] == "active"
    assert [e.type for e in receiver.events()] == types + [e["type"] for e in paid]


def test_status_change_delete_and_trial_events(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, _ = hooked
    sub = subscription_of(sandbox, "trial@startup.io")
    [event] = sandbox.control.trial_will_end(sub["id"])["events"]
    assert event["type"] == "customer.subscription.trial_will_end"
    events = sandbox.control.set_subscription_status(sub["id"], "paused")["events"]
    assert [e["type"] for e in events] == ["customer.subscription.updated", "customer.subscription.paused"]
    [deleted] = sandbox.control.delete(sub["id"])["events"]
    assert deleted["type"] == "customer.subscription.deleted"
    assert deleted["data"]["object"]["status"] == "canceled"
    with pytest.raises(SandboxControlError, match="accepted"):
        sandbox.control.set_subscription_status(sub["id"], "sleepy")


def test_clock_ties_event_created(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, _ = hooked
    sandbox.control.set_clock(1_900_000_000)
    cid = customer_id(sandbox, "nosubs@example.com")
    first = sandbox.control.update(cid, {"name": "A"})["events"][0]
    second = sandbox.control.update(cid, {"name": "B"})["events"][0]
    assert first["created"] == second["created"] == 1_900_000_000
    sandbox.control.advance_clock(5)
    assert sandbox.control.update(cid, {"name": "C"})["events"][0]["created"] == 1_900_000_005
    sandbox.control.set_clock(None)


def test_failed_delivery_is_recorded_and_redelivered(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, receiver = hooked
    receiver.status = 500
    cid = customer_id(sandbox, "nosubs@example.com")
    event = sandbox.control.update(cid, {"name": "Z"})["events"][0]
    [attempt] = sandbox.control.deliveries(event["id"])
    assert attempt["status"] == 500 and attempt["ok"] is False
    receiver.status = 200
    assert sandbox.control.redeliver_failed()["redelivered"] == [event["id"]]
    assert [a["ok"] for a in sandbox.control.deliveries(event["id"])] == [False, True]
    assert sandbox.control.redeliver_failed()["redelivered"] == []


def test_deliver_in_given_order_and_duplicates(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, receiver = hooked
    cid = customer_id(sandbox, "nosubs@example.com")
    first = sandbox.control.update(cid, {"name": "1"})["events"][0]["id"]
    second = sandbox.control.update(cid, {"name": "2"})["events"][0]["id"]
    receiver.received.clear()
    sandbox.control.deliver([second, first], times=2)
    assert [e.id for e in receiver.events()] == [second, second, first, first]


def test_background_delivery(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, receiver = hooked
    sandbox.control.set_webhook_mode("background")
    event = sandbox.control.update(customer_id(sandbox, "nosubs@example.com"), {"name": "bg"})["events"][0]
    deadline = time.monotonic() + 5
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.id for e in receiver.events()] == [event["id"]]


def test_charge_create_and_refund(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, _ = hooked
    cid = customer_id(sandbox, "nosubs@example.com")
    [created] = sandbox.control.create_charge(cid, 1500)["events"]
    assert created["type"] == "charge.succeeded"
    charge_id = created["data"]["object"]["id"]
    [refund] = sandbox.control.refund_charge(charge_id, 500)["events"]
    assert refund["type"] == "charge.refunded"
    assert refund["data"]["object"]["amount_refunded"] == 500
    assert refund["data"]["object"]["refunded"] is False
    with pytest.raises(SandboxControlError, match="between 1 and 1000"):
        sandbox.control.refund_charge(charge_id, 5000)


def test_events_list_filters(hooked: tuple[SandboxHandle, Receiver]) -> None:
    sandbox, _ = hooked
    cid = customer_id(sandbox, "nosubs@example.com")
    sandbox.control.update(cid, {"name": "n"})
    sandbox.control.create_charge(cid, 100)
    client = stripe.StripeClient(sandbox.api_key, base_addresses={"api": sandbox.url})
    assert [e.type for e in client.v1.events.list(params={"types": ["charge.succeeded"]}).data] == [
        "charge.succeeded"
    ]
    assert [e.type for e in client.v1.events.list().data] == ["charge.succeeded", "customer.updated"]
    assert client.v1.events.list(params={"type": "customer.*"}).data[0].type == "customer.updated"
