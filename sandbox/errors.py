"""Stripe's error shape, raised by the store and the routes and rendered by the app."""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    """One API error as Stripe renders it: ``{"error": {"type", "code", "message", "param"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, message, param=param, code=code)


def no_such(kind: str, object_id: str, param: str = "id", other_mode: str | None = None) -> StripeError:
    message = f"No such {kind}: '{object_id}'"
    if other_mode is not None:
        used = "test" if other_mode == "live" else "live"
        message += (
            f"; a similar object exists in {other_mode} mode, "
            f"but a {used} mode key was used to make this request."
        )
    return StripeError(404, message, code="resource_missing", param=param)
