"""API keys: format check, mode, revocation and per-key permissions (restricted keys)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sandbox.errors import StripeError

KEY_FORMAT = re.compile(r"^(rk|sk)_(test|live)_[A-Za-z0-9]+$")
PERMISSIONS = (
    "rak_customer_read",
    "rak_subscription_read",
    "rak_invoice_read",
    "rak_charge_read",
    "rak_plan_read",
    "rak_product_read",
    "rak_coupon_read",
    "rak_event_read",
    "rak_dispute_read",
    "rak_credit_note_read",
    "rak_payment_method_read",
    "rak_payment_intent_read",
)


def mask_key(key: str) -> str:
    """Stripe's masking: the type prefix, stars, and the last four characters; never more."""
    match = re.match(r"^((?:rk|sk|pk)_(?:test|live)_)", key)
    prefix = match.group(1) if match else ""
    tail = key[-4:] if len(key) - len(prefix) > 4 else ""
    return f"{prefix}{'*' * max(4, len(key) - len(prefix) - len(tail))}{tail}"


@dataclass
class KeyRegistry:
    """Keys are valid by format; tests revoke keys or narrow a key's permissions."""

    account_id: str
    revoked: set[str] = field(default_factory=set)
    permissions: dict[str, frozenset[str]] = field(default_factory=dict)

    def reset(self) -> None:
        self.revoked.clear()
        self.permissions.clear()

    def authenticate(self, header: str | None) -> tuple[str, bool]:
        """The key and its livemode, or Stripe's 401."""
        if not header:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the Authorization "
                "header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise StripeError(
                401, "Invalid Authorization header: use 'Authorization: Bearer YOUR_SECRET_KEY'."
            )
        match = KEY_FORMAT.match(key)
        if match is None or key in self.revoked:
            message = f"Invalid API Key provided: {mask_key(key)}"
            if key in self.revoked:
                message = f"Expired API Key provided: {mask_key(key)}"
            raise StripeError(401, message, code="api_key_expired" if key in self.revoked else None)
        return key, match.group(2) == "live"

    def authorize(self, key: str, permission: str | None) -> None:
        granted = self.permissions.get(key)
        if permission is None or granted is None or permission in granted:
            return
        raise StripeError(
            403,
            f"The provided key '{mask_key(key)}' does not have the required permissions for this endpoint "
            f"on account '{self.account_id}'. Having the '{permission}' permission would allow this request "
            "to continue.",
        )

    def set_permissions(self, key: str, permissions: list[str] | None) -> None:
        if permissions is None:
            self.permissions.pop(key, None)
            return
        unknown = sorted(set(permissions) - set(PERMISSIONS))
        if unknown:
            raise StripeError(
                400,
                f"Unknown permission {unknown[0]!r}; accepted: {', '.join(PERMISSIONS)}.",
                param="permissions",
            )
        self.permissions[key] = frozenset(permissions)
