"""The ASGI app: Stripe's read API under ``/v1`` and the test control API under ``/_sandbox``."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import control_routes
from sandbox.core import Sandbox
from sandbox.errors import StripeError
from sandbox.listing import (
    RESOURCES,
    apply_expand,
    expand_paths,
    list_objects,
    search_customers,
    search_invoices,
)
from sandbox.params import Params, check_known, parse_params
from sandbox.preview import PERMISSION as PREVIEW_PERMISSION
from sandbox.preview import create_preview
from sandbox.state import Obj

_request_ids = itertools.count(1)
# The ``param`` of Stripe's 404 for an unknown id, where it is not ``id`` (the path parameter's name).
_RETRIEVE_PARAM = {
    "subscription": "subscription_exposed_id", "payment_intent": "intent", "invoice": "invoice",
}


def error_response(error: StripeError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _authorize_expansions(sandbox: Sandbox, key: str, params: Params) -> None:
    """Expanding an object of another resource needs that resource's read permission, as in Stripe:
    a customer's or subscription's ``default_payment_method`` needs ``rak_payment_method_read``."""
    expand = params.get("expand", [])
    paths = expand if isinstance(expand, list) else [expand]
    if any(isinstance(p, str) and p.split(".")[-1] == "default_payment_method" for p in paths):
        sandbox.keys.authorize(key, "rak_payment_method_read")


def _route(sandbox: Sandbox, method: str, path: str, params: Params, key: str, livemode: bool) -> Obj:
    """Answer one authenticated API request (called with the store lock held)."""
    if method == "GET":
        _authorize_expansions(sandbox, key, params)
    if method == "POST" and path.rstrip("/") == "/v1/invoices/create_preview":
        # the one POST that writes nothing: Stripe's invoice preview, an invoice read
        sandbox.keys.authorize(key, PREVIEW_PERMISSION)
        return create_preview(sandbox.store, params, livemode)
    if method != "GET":
        raise StripeError(
            403,
            "This is a read-only sandbox: Billing Lens only reads from Stripe, so writes "
            f"({method} {path}) are refused.",
        )
    parts = path.strip("/").split("/")[1:]  # drop "v1"
    store = sandbox.store
    if parts == ["account"]:
        check_known(params, {"expand"})
        return sandbox.account(livemode)
    if parts == ["customers", "search"]:
        sandbox.keys.authorize(key, "rak_customer_read")
        return search_customers(store, params, livemode)
    if parts == ["invoices", "search"]:
        sandbox.keys.authorize(key, "rak_invoice_read")
        return search_invoices(store, params, livemode)
    resource = RESOURCES.get(parts[0]) if parts else None
    if resource is None or len(parts) > 2:
        raise StripeError(
            404,
            f"Unrecognized request URL (GET: {path}). Please see https://stripe.com/docs or we can help at "
            "https://support.stripe.com/.",
        )
    sandbox.keys.authorize(key, resource.permission)
    if len(parts) == 1:
        return list_objects(store, resource, params, livemode)
    check_known(params, {"expand"})
    obj = store.get(resource.kind, parts[1], livemode, param=_RETRIEVE_PARAM.get(resource.kind, "id"))
    rendered = store.render(obj)
    if rendered.get("deleted"):
        return {"id": rendered["id"], "object": rendered["object"], "deleted": True}
    for segments in expand_paths(params, is_list=False):
        rendered = apply_expand(rendered, segments, store, livemode)
    return rendered


log = logging.getLogger("sandbox")

def build_app(sandbox: Sandbox) -> Starlette:
    async def api(request: Request) -> Response:
        path = request.url.path
        entry: dict[str, Any] = {
            "method": request.method,
            "path": path,
            "query": dict(request.query_params),
            "status": 0,
            "mode": None,
        }
        sandbox.in_flight += 1
        try:
            key, livemode = sandbox.keys.authenticate(request.headers.get("authorization"))
            entry["mode"] = "live" if livemode else "test"
            latency, fault = sandbox.faults.decide(path)
            if latency:
                await asyncio.sleep(latency)
            if fault is not None:
                raise fault
            items = list(request.query_params.multi_items())
            if request.method != "GET":
                form = await request.form()
                items += [(k, str(v)) for k, v in form.multi_items()]
            params = parse_params(items)
            with sandbox.store.lock:
                body = _route(sandbox, request.method, path, params, key, livemode)
            response: Response = JSONResponse(body)
        except StripeError as error:
            response = error_response(error)
        except Exception as error:  # a sandbox bug or an odd loaded object: still Stripe's error shape
            log.exception("sandbox request %s %s failed", request.method, path)
            failure = StripeError(500, f"Sandbox error: {type(error).__name__}.", type="api_error")
            response = error_response(failure)
        finally:
            sandbox.in_flight -= 1
        response.headers["Request-Id"] = f"req_sandbox{next(_request_ids):010d}"
        response.headers["Stripe-Version"] = request.headers.get("stripe-version", "")
        entry["status"] = response.status_code
        sandbox.requests.append(entry)
        return response

    async def not_found(request: Request) -> Response:
        return error_response(
            StripeError(404, f"Unrecognized request URL ({request.method}: {request.url.path}).")
        )

    routes = [
        Route("/v1/{path:path}", api, methods=["GET", "POST", "DELETE"]),
        *control_routes.routes(sandbox),
    ]
    app = Starlette(routes=routes)
    app.add_route("/{path:path}", not_found, methods=["GET", "POST", "DELETE"])
    return app
