"""Fixtures that run the Stripe sandbox on a loopback port (owned by the sandbox work)."""
