"""Shared fixtures live in plugin modules, one per real part the tests run against."""

pytest_plugins = ["tests.fixtures_sandbox", "tests.fixtures_redis", "tests.fakes.stripe_servers"]
