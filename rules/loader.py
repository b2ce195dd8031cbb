"""Load a rules file: YAML with line numbers, ``${VAR}`` substitution, validation into ``RulesFile``.

Every problem is reported as ``file:line: reason``, one line each, and all problems at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rules.conditions import Path, Problem, parse_currency
from rules.schema import Actions, Alert, ExchangeRates, Rule, RulesFile

DEFAULT_RULES_FILE = "default_rules.yml"
# Bounds that keep a hostile or broken file cheap to refuse: a few hundred bytes of aliases can
# otherwise expand to billions of values (the "billion laughs").
MAX_RULES_BYTES = 256 * 1024
MAX_ALIASED_VALUES = 100_000  # values repeated through aliases, counted while walking the file
MAX_NESTING = 64  # lists and mappings inside each other; a rules file needs about 10
_STR_TAG = "tag:yaml.org,2002:str"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")


class RulesError(Exception):
    """A rules file that cannot be used; ``str(err)`` is one ``file:line: reason`` line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. In YAML 1.1 ``on:`` (the alert key) and ``no`` are booleans,
    which would make ``on: subscription.past_due`` a key ``True``: a file that says one thing and means
    another.

    Composing is recursive: nesting is bounded here, before Python's own recursion limit is reached."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _TooDeep(self.peek_event().start_mark.line + 1)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def default_rules_path() -> FilePath:
    """The rules file shipped with the package (``BILLING_RULES_FILE`` overrides it: see ``rules_path``)."""
    return FilePath(__file__).with_name(DEFAULT_RULES_FILE)


def rules_path(configured: str | None) -> FilePath:
    """The rules file to use: the configured ``BILLING_RULES_FILE`` when set, else the packaged default."""
    return FilePath(configured) if configured else default_rules_path()


def load_rules(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RulesFile:
    """Read and validate a rules file; raises ``RulesError`` naming the file and line of each problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_RULES_BYTES:
                raise RulesError([_too_big(source, size)])
            text = file.read(MAX_RULES_BYTES + 1).decode("utf-8")
    except FileNotFoundError:
        raise RulesError([f"{source}: no such rules file"]) from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "it is not UTF-8 text"
        raise RulesError([f"{source}: cannot read the rules file: {reason}"]) from None
    return load_rules_text(text, source, env)


def _too_big(source: str, size: int) -> str:
    return (f"{source}:1: the rules file is {size:,} bytes; "
            f"a rules file may have at most {MAX_RULES_BYTES:,} bytes ({MAX_RULES_BYTES // 1024} KiB)")


def load_rules_text(text: str, source: str = "<string>", env: Mapping[str, str] | None = None) -> RulesFile:
    """Validate rules YAML held in a string; ``source`` names it in error lines."""
    environ = os.environ if env is None else env
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_RULES_BYTES:
        raise RulesError([_too_big(source, size)])
    lines: dict[Path, int] = {}
    problems: list[tuple[int, str]] = []
    try:
        loader = _Loader(text)  # the reader refuses control characters here, before any parsing
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise RulesError([f"{source}:{line}: malformed YAML: character #x{err.character:04x} is not "
                          "allowed in YAML"]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise RulesError([f"{source}:1: the rules file is empty (expected 'version: 1' and 'rules:')"])
        # The walk expands aliases (and bounds that) before anything is built from the nodes.
        _walk(node, (), lines, problems, environ, frozenset(), _Expansion())
        data = loader.construct_document(node)
    except _RecursiveAlias as err:
        raise RulesError([f"{source}:{err.line}: an alias refers to a mapping or list that contains it"]) \
            from None
    except _TooDeep as err:
        raise RulesError([f"{source}:{err.line}: the rules file nests lists and mappings more than "
                          f"{MAX_NESTING} deep"]) from None
    except _AliasBomb as err:
        raise RulesError([f"{source}:{err.line}: the rules file expands to more than {MAX_ALIASED_VALUES} "
                          "values through aliases (each *alias repeats its &anchor's content)"]) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = " ".join(part for part in (err.context, err.problem) if part)
        raise RulesError([f"{source}:{line}: malformed YAML: {reason}"]) from None
    except yaml.YAMLError as err:
        raise RulesError([f"{source}:1: malformed YAML: {err}"]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise RulesError([f"{source}:1: the rules file must be a mapping with 'version: 1' and 'rules:'"])
    try:
        # The default currency is passed down so money tests are checked alongside every other problem.
        context = {"default_currency": parse_currency(data.get("default_currency"))}
        rules = RulesFile.model_validate(data, context=context)
    except ValidationError as err:
        problems += _error_problems(err, data, lines)
    if problems:
        # Report everything at once, in file order.
        ordered = sorted(dict.fromkeys(problems), key=lambda item: item[0])
        raise RulesError([f"{source}:{line}: {reason}" for line, reason in ordered])
    return rules


class _RecursiveAlias(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _AliasBomb(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


@dataclass
class _Expansion:
    """What the walk has seen: nodes met once (a second meeting is an alias), values met again."""

    seen: set[int] = field(default_factory=set)
    repeated: int = 0


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], problems: list[tuple[int, str]],
          env: Mapping[str, str], ancestors: frozenset[int], expansion: _Expansion,
          alias_line: int | None = None) -> None:
    """Record the line of every key and list item, substitute ``${VAR}`` in string values.

    Aliases are walked where they are used, so the walk sees the document as it will be built: it
    counts the values repeated through aliases and stops past ``MAX_ALIASED_VALUES``, naming the line
    of the outermost alias being expanded (``alias_line``)."""
    lines.setdefault(path, node.start_mark.line + 1)
    # An alias node keeps its anchor's marks: the line of the key (or list) holding the alias.
    holder = lines[path[:-1]] if path and isinstance(path[-1], int) else lines[path]
    if id(node) in ancestors:  # `a: &x [*x]`: the node graph has a cycle, walking it never ends
        raise _RecursiveAlias(holder)
    if len(path) > MAX_NESTING:  # aliases inside anchors inside aliases can nest past what was composed
        raise _TooDeep(alias_line or holder)
    if alias_line is None and id(node) in expansion.seen:
        alias_line = holder
    if alias_line is not None:
        expansion.repeated += 1
        if expansion.repeated > MAX_ALIASED_VALUES:
            raise _AliasBomb(alias_line)
    else:
        expansion.seen.add(id(node))
    ancestors = ancestors | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append((line, f"duplicate key {key!r} (the later one would silently win)"))
            seen.add(key)
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems, env, ancestors, expansion, alias_line)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _walk(item, (*path, i), lines, problems, env, ancestors, expansion, alias_line)
    elif isinstance(node, yaml.ScalarNode) and node.tag == _STR_TAG and "${" in node.value:
        node.value = _substitute(node.value, node.start_mark.line + 1, problems, env)


def _is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS)


def _substitute(value: str, line: int, problems: list[tuple[int, str]], env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if _is_secret_name(name):
            # A rules value ends up in logs, reasons and Slack messages: a secret must never get there.
            problems.append((line, f"variable {name} looks like a secret and is not substituted "
                                   f"(names containing {', '.join(_SECRET_WORDS)} are refused)"))
            return ""
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append((line, f"undefined variable {name}: set it in the environment "
                               f"or write ${{{name}:-default}}"))
        return match.group(0)

    result = _VAR_RE.sub(replace, value)
    if "${" in _VAR_RE.sub("", value):
        problems.append((line, f"malformed variable reference in {value!r} "
                               f"(write ${{NAME}} or ${{NAME:-default}})"))
    return result


def _line_of(loc: Path, lines: dict[Path, int]) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _where(loc: Path, data: dict[str, Any]) -> str:
    if len(loc) >= 2 and loc[0] in ("rules", "alerts") and isinstance(loc[1], int):
        items = data.get(str(loc[0]))
        item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        if loc[0] == "rules":
            name = item.get("name") if isinstance(item, dict) else None
            return f" in rule {name!r}" if name else f" in rule #{loc[1] + 1}"
        label = (item.get("name") or item.get("on")) if isinstance(item, dict) else None
        return f" in alert {label!r}" if label else f" in alert #{loc[1] + 1}"
    return ""


def _model_at(loc: Path) -> type[BaseModel]:
    """The model whose keys are valid at ``loc`` (used to list accepted keys)."""
    shape = tuple("#" if isinstance(part, int) else part for part in loc)
    models: dict[tuple[str | int, ...], type[BaseModel]] = {
        ("rules", "#"): Rule, ("rules", "#", "then"): Actions, ("alerts", "#"): Alert,
        ("exchange_rates",): ExchangeRates,
    }
    return models.get(shape, RulesFile)


def _error_problems(
    err: ValidationError, data: dict[str, Any], lines: dict[Path, int]
) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for error in err.errors():
        loc: Path = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        problems: list[Problem] | None = ctx.get("problems")
        if problems:
            for problem in problems:
                found.append((_line_of((*loc, *problem.path), lines), problem.message))
            continue
        where = _where(loc, data)
        kind = error["type"]
        if kind == "extra_forbidden":
            keys = ", ".join(_model_at(loc[:-1]).model_fields)
            reason = f"unknown key {loc[-1]!r}{where} (keys: {keys})"
        elif kind == "missing":
            reason = f"missing {loc[-1]!r}{where}"
        elif loc == ("version",):
            reason = "unsupported version (this program reads 'version: 1')"
        else:
            field = next((str(p) for p in reversed(loc) if isinstance(p, str)), "file") if where \
                else ".".join(str(p) for p in loc)
            reason = f"{field}{where}: {error['msg']}"
        found.append((_line_of(loc, lines), reason))
    return found
