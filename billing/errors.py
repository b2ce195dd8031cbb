"""Expected failures, each one clear sentence with the CLI exit code it maps to.

Messages never contain a key, a token or a signing secret.
"""

from __future__ import annotations


class BillingError(Exception):
    """Base of every expected failure; ``str(err)`` is a sentence fit for a user."""

    exit_code = 1


class BadQueryError(BillingError):
    """The lookup query is neither an email, a Slack mailto link nor a ``cus_…`` id."""

    exit_code = 2


class ConfigurationError(BillingError):
    """A setting is missing or wrong (a full secret key, a malformed URL, a missing permission)."""

    exit_code = 2


class StripeUnavailableError(BillingError):
    """Stripe could not be reached or kept failing after retries."""

    exit_code = 3


class StoreUnavailableError(BillingError):
    """Redis could not be reached."""

    exit_code = 3
