"""Issue #9, items 6, 7 and 10: every setting is checked at start-up, and a bad one is one sentence
naming the variable (exit 2), never a traceback, never a silently skipped cache.

The command-line cases run the installed ``billing`` console script as a subprocess, so what is
asserted is what an operator sees: the exit code and stderr, whole.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from billing.errors import ConfigurationError
from bot.runtime import load_settings
from tests.cluster import RedisServer, free_port
from tests.fixtures_sandbox import SandboxHandle
from tests.loopback import serve_until_healthy

BILLING = Path(sys.executable).with_name("billing")
OUR_VARIABLES = ("STRIPE_", "BILLING_", "REDIS_", "SLACK_")
SECRET = "SECRET42"  # part of passwords and keys below: it must never be printed


def billing(args: list[str], timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``billing ARGS`` with only these of our settings (the outer shell's are dropped)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    return subprocess.run([str(BILLING), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """stderr is exactly one sentence: one line, no traceback, no secret."""
    err = result.stderr.strip()
    assert err, f"nothing on stderr (exit {result.returncode}); stdout: {result.stdout}"
    assert "Traceback" not in result.stderr and "\n" not in err, result.stderr
    assert err.endswith("."), err
    assert SECRET not in result.stderr + result.stdout
    return err


def sandbox_env(sandbox: SandboxHandle, **extra: str) -> dict[str, str]:
    return {"STRIPE_API_KEY": sandbox.api_key, "STRIPE_API_BASE": sandbox.url,
            "BILLING_STRIPE_RETRIES": "1", **extra}


def with_redis(
    command: list[str], sandbox: SandboxHandle, url: str, key_prefix: str, *, code: int = 2
) -> str:
    """``billing COMMAND`` on Redis at ``url`` exits ``code`` with one sentence on stderr: that sentence."""
    result = billing(command, **sandbox_env(sandbox, REDIS_URL=url, BILLING_KEY_PREFIX=key_prefix))
    assert result.returncode == code, result.stderr
    return one_line(result)


# --- item 6: values refused in-process, one sentence naming the variable --------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_URL", "redis://127.0.0.1:6379/abc"),
        ("REDIS_URL", f"redis://:{SECRET}@127.0.0.1:6379/abc"),
        ("REDIS_URL", "redis://127.0.0.1:6379/0?db=x"),
        ("REDIS_URL", f"redis://:{SECRET}@127.0.0.1:99999/0"),
        ("REDIS_URL", "redis://127.0.0.1:0/0"),
        ("REDIS_URL", f"redis://:{SECRET}@[::zz/0"),
        ("REDIS_URL", f"postgres://u:{SECRET}@h/0"),
        ("BILLING_STRIPE_RATE", "0"),
        ("BILLING_STRIPE_RATE", "nan"),
        ("BILLING_STRIPE_RATE", "-5"),
        ("BILLING_STRIPE_RATE", "inf"),
        ("BILLING_MAX_STALENESS", "-1"),
        ("BILLING_MAX_STALENESS", "nan"),
        ("BILLING_MAX_STALENESS", "1e400"),
        ("BILLING_MAX_STALENESS", "1e300"),
        ("BILLING_STRIPE_TIMEOUT", "0"),
        ("BILLING_STRIPE_TIMEOUT", "-3"),
        ("BILLING_STRIPE_TIMEOUT", "inf"),
        ("BILLING_STRIPE_RETRIES", "-1"),
        ("BILLING_LOG_LEVEL", "bogus"),
        ("STRIPE_API_BASE", "http://[::zz"),
        ("STRIPE_API_BASE", "localhost:1"),
        ("STRIPE_API_BASE", "http://127.0.0.1:99999"),
        ("SLACK_API_URL", "ftp://slack.example"),
        ("STRIPE_ACCOUNT_ID", "acct with spaces"),
        ("BILLING_KEY_PREFIX", "a{b}"),
        ("BILLING_KEY_PREFIX", ""),
        ("BILLING_DEMO", "perhaps"),
    ],
)
def test_a_bad_setting_is_one_sentence_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(**{variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable} "), message
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0, message
    assert SECRET not in message
    field_names = {"redis_url", "stripe_rate_limit", "max_staleness_seconds", "stripe_timeout_seconds",
                   "stripe_max_retries", "log_level", "stripe_api_base", "key_prefix"}
    assert not any(name in message for name in field_names), message


def test_log_level_sentence_lists_the_accepted_levels() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(BILLING_LOG_LEVEL="bogus")
    for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        assert level in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("REDIS_URL", "redis://127.0.0.1:6379/2"), ("REDIS_URL", "rediss://u:p@redis.example:6380"),
     ("REDIS_URL", "redis://127.0.0.1:6379/0?cluster=true"), ("REDIS_URL", "memory://"),
     ("REDIS_URL", "memory://named"), ("BILLING_MAX_STALENESS", "0"), ("BILLING_STRIPE_RATE", "2.5"),
     ("BILLING_STRIPE_RETRIES", "0"), ("BILLING_LOG_LEVEL", "debug"), ("BILLING_LOG_LEVEL", ""),
     ("STRIPE_API_BASE", "http://[::1]:12111"), ("STRIPE_ACCOUNT_ID", "acct_1A2b3C"),
     ("BILLING_DEMO", "1")],
)
def test_good_values_are_accepted(variable: str, value: str) -> None:
    load_settings(**{variable: value})


# --- item 7: what used to be a traceback, as the operator runs it ---------------------------------


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["lookup", "jane@acme.com"], {"REDIS_URL": f"redis://:{SECRET}@127.0.0.1:99999/0"}, "REDIS_URL"),
        (["lookup", "jane@acme.com"], {"REDIS_URL": "redis://127.0.0.1:6379/abc"}, "REDIS_URL"),
        (["lookup", "jane@acme.com", "--refresh"], {"STRIPE_API_BASE": "http://[::zz"}, "STRIPE_API_BASE"),
        (["lookup", "jane@acme.com"], {"BILLING_MAX_STALENESS": "nan"}, "BILLING_MAX_STALENESS"),
        (["lookup", "jane@acme.com"], {"BILLING_MAX_STALENESS": "1e400"}, "BILLING_MAX_STALENESS"),
        (["lookup", "jane@acme.com"], {"BILLING_STRIPE_RATE": "0"}, "BILLING_STRIPE_RATE"),
        (["lookup", "jane@acme.com"], {"BILLING_LOG_LEVEL": "bogus"}, "BILLING_LOG_LEVEL"),
        (["status"], {"BILLING_LOG_LEVEL": "bogus"}, "BILLING_LOG_LEVEL"),
        (["serve", "--port", "70000"], {"STRIPE_WEBHOOK_SECRET": "whsec_x", "BILLING_DEMO": "1"}, "--port"),
        (["serve", "--port", "0"], {"STRIPE_WEBHOOK_SECRET": "whsec_x", "BILLING_DEMO": "1"}, "--port"),
        (["lookup", "jane@acme.com", "--bogus"], {}, "--bogus"),
    ],
    ids=["redis-port", "redis-db", "api-base", "staleness-nan", "staleness-1e400", "rate-0", "log-level",
         "log-level-status", "serve-port", "serve-port-0", "unknown-option"],
)
def test_a_bad_value_is_one_sentence_and_exit_2_not_a_traceback(
    args: list[str], env: dict[str, str], named: str
) -> None:
    settings = {"STRIPE_API_KEY": f"rk_test_{SECRET}", "STRIPE_API_BASE": "http://127.0.0.1:9", **env}
    result = billing(args, **settings)
    assert result.returncode == 2, result.stderr
    assert named in one_line(result)


# --- item 6: a Redis that answers but refuses us is configuration, not an outage ------------------


@pytest.fixture
def password_redis(private_redis: RedisServer) -> RedisServer:
    """The private server, now with a password (set after start: the fixture's ping has no AUTH)."""
    subprocess.run(["redis-cli", "-p", str(private_redis.port), "config", "set", "requirepass",
                    f"right{SECRET}"], check=True, capture_output=True, timeout=10)
    return private_redis


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server that speaks only TLS, on a free loopback port (skipped without openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "--tls", "--insecure", "-p", str(port), "ping"],
                                  capture_output=True, text=True, timeout=5, check=False)
            if ping.stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the TLS redis-server did not start")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("command", [["lookup", "jane@acme.com"], ["status"]])
def test_a_wrong_redis_password_is_configuration_exit_2(
    sandbox: SandboxHandle, password_redis: RedisServer, key_prefix: str, command: list[str]
) -> None:
    url = f"redis://:wrong{SECRET}@127.0.0.1:{password_redis.port}/0"
    message = with_redis(command, sandbox, url, key_prefix)
    assert "REDIS_URL" in message and "password" in message


def test_a_missing_redis_password_is_configuration_exit_2(
    sandbox: SandboxHandle, password_redis: RedisServer, key_prefix: str
) -> None:
    url = f"redis://127.0.0.1:{password_redis.port}/0"
    assert "REDIS_URL" in with_redis(["status"], sandbox, url, key_prefix)


@pytest.mark.parametrize("command", [["lookup", "jane@acme.com"], ["status"]])
def test_a_database_the_server_lacks_is_configuration_exit_2(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str, command: list[str]
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/99"
    message = with_redis(command, sandbox, url, key_prefix)
    assert "REDIS_URL" in message and "99" in message


def test_tls_to_a_plain_redis_is_configuration_exit_2(
    sandbox: SandboxHandle, redis_url: str, key_prefix: str
) -> None:
    url = redis_url.replace("redis://", "rediss://", 1)
    message = with_redis(["lookup", "jane@acme.com"], sandbox, url, key_prefix)
    assert "REDIS_URL" in message and "TLS" in message


def test_plain_redis_to_a_tls_server_is_configuration_exit_2(
    sandbox: SandboxHandle, tls_redis: int, key_prefix: str
) -> None:
    url = f"redis://127.0.0.1:{tls_redis}/0"
    message = with_redis(["status"], sandbox, url, key_prefix)
    assert "REDIS_URL" in message and "rediss://" in message


def test_an_untrusted_tls_certificate_is_configuration_exit_2(
    sandbox: SandboxHandle, tls_redis: int, key_prefix: str
) -> None:
    url = f"rediss://127.0.0.1:{tls_redis}/0"
    message = with_redis(["status"], sandbox, url, key_prefix)
    assert "REDIS_URL" in message and "certificate" in message


def test_status_with_unreachable_redis_stays_exit_3(sandbox: SandboxHandle, key_prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert "Redis" in with_redis(["status"], sandbox, url, key_prefix, code=3)


def test_an_unreachable_cache_is_one_warning_line_and_the_lookup_still_answers(
    sandbox: SandboxHandle, key_prefix: str
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = billing(["lookup", "jane@acme.com", "--json"],
                     **sandbox_env(sandbox, REDIS_URL=url, BILLING_KEY_PREFIX=key_prefix))
    assert result.returncode == 0, result.stderr
    warning = one_line(result)
    assert "Redis" in warning and "REDIS_URL" in warning and "Stripe" in warning
    assert '"source": "stripe"' in result.stdout


# --- item 10: serve and worker never run on the in-process store by accident ----------------------


@pytest.mark.parametrize("command", [["serve", "--port", "3000"], ["worker"]])
@pytest.mark.parametrize("redis_url", ["memory://", "memory://named", None], ids=["memory", "named", "unset"])
def test_serve_and_worker_refuse_the_in_process_store(
    sandbox: SandboxHandle, command: list[str], redis_url: str | None
) -> None:
    env = sandbox_env(sandbox, STRIPE_WEBHOOK_SECRET="whsec_test")
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    result = billing(command, **env)
    assert result.returncode == 2, result.stderr
    message = one_line(result)
    assert "memory://" in message and "BILLING_DEMO=1" in message and "REDIS_URL" in message


def test_serve_runs_on_the_in_process_store_when_told_it_is_a_demo(
    sandbox: SandboxHandle, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
    env.update(sandbox_env(sandbox, STRIPE_WEBHOOK_SECRET="whsec_test", BILLING_DEMO="1"))
    output = serve_until_healthy([str(BILLING), "serve", "--port", str(port)], port, env,
                                 tmp_path / "serve.log")
    assert "Traceback" not in output
