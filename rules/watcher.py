"""Keep a rules file current in a long-running process (``billing serve``), without threads."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from rules.loader import RulesError, load_rules
from rules.schema import RulesFile

log = logging.getLogger(__name__)


class RulesWatcher:
    """``current()`` returns the rules in force, reloading when the file's mtime or size changes.

    The file is stat'ed at most once per ``min_interval`` seconds. A bad new file keeps the old rules
    in force and logs its error lines; the first load raises ``RulesError`` (nothing to fall back on).
    """

    def __init__(self, path: str | os.PathLike[str], *, min_interval: float = 1.0,
                 env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._min_interval = min_interval
        self._env = env
        self._clock = clock
        self._signature = self._stat()
        self._rules = load_rules(self.path, env)
        self._checked_at = clock()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> RulesFile:
        now = self._clock()
        if now - self._checked_at < self._min_interval:
            return self._rules
        self._checked_at = now
        signature = self._stat()
        if signature == self._signature:
            return self._rules
        self._signature = signature
        try:
            self._rules = load_rules(self.path, self._env)
        except RulesError as err:
            log.error("rules file changed but cannot be used; the previous rules stay in force:\n%s", err)
        else:
            log.info("rules reloaded from %s (%d rules, %d alerts)",
                     self.path, len(self._rules.rules), len(self._rules.alerts))
        return self._rules
