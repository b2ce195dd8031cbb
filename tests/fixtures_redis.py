"""Fixtures for a real Redis server and a private key prefix (owned by the store work)."""
