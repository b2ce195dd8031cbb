"""The Slack app manifests validate against Slack's manifest schema and declare what the app uses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTTP_MANIFEST = ROOT / "manifest.yml"
SOCKET_MANIFEST = ROOT / "manifest.socket.yml"
MANIFESTS = [HTTP_MANIFEST, SOCKET_MANIFEST]

COMMAND = "/billing"
USAGE_HINT = "[email | cus_… | help | status | link | unlink | resync]"
SHORTCUT_CALLBACK_ID = "billing_context"
BOT_EVENTS = {"app_home_opened", "app_uninstalled", "tokens_revoked"}
BOT_SCOPES = {
    "commands",
    "chat:write",
    "users:read",
    "users:read.email",
    "usergroups:read",
    "channels:history",
    "groups:history",
}


def schema_path() -> Path:
    """/work/shared/slack/manifest.schema.json beside the clone, else under $BILLING_SHARED_DIR."""
    beside = Path(__file__).resolve().parents[3] / "shared" / "slack" / "manifest.schema.json"
    if beside.is_file():
        return beside
    shared_dir = os.environ.get("BILLING_SHARED_DIR")
    if shared_dir:
        return Path(shared_dir) / "slack" / "manifest.schema.json"
    return beside  # missing: the test fails saying where it looked


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def request_urls(manifest: dict[str, Any]) -> list[str]:
    settings = manifest.get("settings", {})
    urls = [command["url"] for command in manifest["features"]["slash_commands"] if "url" in command]
    for section in ("event_subscriptions", "interactivity"):
        if "request_url" in settings.get(section, {}):
            urls.append(settings[section]["request_url"])
    return urls


def keys(node: Any) -> set[str]:
    """Every mapping key anywhere in a loaded YAML document."""
    if isinstance(node, dict):
        return set(node).union(*(keys(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(keys(item) for item in node))
    return set()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_slack_schema(path: Path) -> None:
    schema_file = schema_path()
    assert schema_file.is_file(), f"Slack manifest schema not found at {schema_file}"
    schema = yaml.safe_load(schema_file.read_text(encoding="utf-8"))  # JSON is YAML
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)

    errors = sorted(validator_class(schema).iter_errors(load(path)), key=lambda e: list(e.absolute_path))

    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_declares_the_command_shortcut_events_and_scopes(path: Path) -> None:
    manifest = load(path)
    features = manifest["features"]
    settings = manifest["settings"]

    assert manifest["display_information"]["name"] == "Billing Lens"
    assert features["bot_user"] == {"display_name": "billing-lens", "always_online": False}
    assert features["app_home"] == {"home_tab_enabled": True, "messages_tab_enabled": False}
    [command] = features["slash_commands"]
    assert command["command"] == COMMAND
    assert command["usage_hint"] == USAGE_HINT
    assert command["should_escape"] is False
    assert command["description"]
    [shortcut] = features["shortcuts"]
    assert shortcut["type"] == "message"
    assert shortcut["callback_id"] == SHORTCUT_CALLBACK_ID
    assert shortcut["name"] == "Billing context"
    assert shortcut["description"]
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == BOT_SCOPES
    assert set(settings["event_subscriptions"]["bot_events"]) == BOT_EVENTS
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_history_scopes_are_explained_by_a_comment(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == "- channels:history")
    comment = []
    while at > 0 and lines[at - 1].strip().startswith("#"):
        at -= 1
        comment.append(lines[at])

    assert "sweeper" in " ".join(comment)


def test_http_manifest_sends_everything_to_slack_events() -> None:
    manifest = load(HTTP_MANIFEST)
    urls = request_urls(manifest)

    assert len(urls) == 3  # the command, events and interactivity
    assert all(url.startswith("https://") and url.endswith("/slack/events") for url in urls), urls
    assert manifest["settings"]["socket_mode_enabled"] is False


def test_socket_manifest_has_socket_mode_and_no_request_urls() -> None:
    manifest = load(SOCKET_MANIFEST)

    assert manifest["settings"]["socket_mode_enabled"] is True
    assert request_urls(manifest) == []
    assert not {"url", "request_url"} & keys(manifest)


def test_both_manifests_differ_only_by_transport() -> None:
    http, socket = load(HTTP_MANIFEST), load(SOCKET_MANIFEST)
    for manifest in (http, socket):
        manifest["settings"].pop("socket_mode_enabled")
        manifest["settings"]["event_subscriptions"].pop("request_url", None)
        manifest["settings"]["interactivity"].pop("request_url", None)
        for command in manifest["features"]["slash_commands"]:
            command.pop("url", None)

    assert http == socket
