"""Rules reload when the file changes; a bad new file keeps the old rules and logs why."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rules import RulesError, RulesWatcher

ONE = "version: 1\nrules:\n  - {name: one, when: {status: active}, then: {assign: a}}\n"
TWO = "version: 1\nrules:\n  - {name: two, when: {status: active}, then: {assign: b}}\n  # longer\n"
BAD = "version: 1\nrules:\n  - {name: bad, when: {sttus: active}, then: {assign: c}}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def names(watcher: RulesWatcher) -> list[str]:
    return [rule.name for rule in watcher.current().rules]


def test_reloads_on_change_and_keeps_old_rules_when_the_new_file_is_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(ONE)
    clock = Clock()
    watcher = RulesWatcher(path, clock=clock)
    assert names(watcher) == ["one"]

    path.write_text(TWO)
    assert names(watcher) == ["one"]  # checked less than a second ago: not even stat'ed
    clock.now += 1.5
    assert names(watcher) == ["two"]

    path.write_text(BAD + "# make the size differ\n")
    clock.now += 1.5
    with caplog.at_level(logging.ERROR, logger="rules.watcher"):
        assert names(watcher) == ["two"]
    assert f"{path}:3: unknown field 'sttus' in rule 'bad'" in caplog.text

    path.write_text(ONE)
    clock.now += 1.5
    assert names(watcher) == ["one"]


def test_a_deleted_file_keeps_the_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(ONE)
    watcher = RulesWatcher(path, min_interval=0)
    path.unlink()
    with caplog.at_level(logging.ERROR, logger="rules.watcher"):
        assert names(watcher) == ["one"]
    assert "no such rules file" in caplog.text


def test_a_bad_first_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(BAD)
    with pytest.raises(RulesError, match=":3: unknown field 'sttus'"):
        RulesWatcher(path)
