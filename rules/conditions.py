"""Parse a ``when:`` block into a condition tree, collecting every problem with its place.

A ``when`` mapping holds field tests that must all hold, plus the combinators ``any:``, ``all:``
and ``not:``. A test is a scalar (equals), a list (one of) or a mapping of operators (all must
hold). ``any``/``all`` take a list of ``when`` mappings or one mapping (each of its tests is one
branch of ``any``); ``not`` takes a ``when`` mapping or a list of them (negating their conjunction).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rules.fields import ALL_OPERATORS, FIELD_NAMES, OPERATORS, FieldSpec, Kind, field_spec

Path = tuple[str | int, ...]
Scalar = str | bool | int | Decimal


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file; ``path`` locates it (relative to the block being parsed)."""

    path: Path
    message: str


@dataclass(frozen=True)
class FieldTest:
    field: str
    op: str
    value: Scalar | tuple[Scalar, ...]
    currency: str | None = None  # money tests only; None = the file's default_currency
    path: Path = ()  # relative to the rule's ``when``, to place load-time problems


@dataclass(frozen=True)
class AllOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = FieldTest | AllOf | AnyOf | Not
ALWAYS = AllOf(())

_COMBINATORS = ("any", "all", "not")
_CURRENCY_RE = re.compile(r"^[a-z]{3}$")
_MAX_AMOUNT = 10**15  # major units: far above any real MRR, far below Decimal's precision


def parse_currency(raw: object) -> str | None:
    """A lower-case ISO code from ``usd``/``USD``, or None when it is not a three-letter code."""
    if isinstance(raw, str) and _CURRENCY_RE.match(raw.lower()):
        return raw.lower()
    return None


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return repr(value)


class _Parser:
    def __init__(self, where: str) -> None:
        self.where = where  # " in rule 'x'": appended to every message
        self.problems: list[Problem] = []

    def fail(self, path: Path, message: str) -> None:
        self.problems.append(Problem(path, message))

    def block(self, raw: object, path: Path) -> Condition:
        """A ``when`` mapping: all of its entries must hold."""
        if not isinstance(raw, Mapping):
            self.fail(path, f"conditions{self.where} must be a mapping of field tests, not {_type_name(raw)}")
            return ALWAYS
        items: list[Condition] = []
        for key, value in raw.items():
            items.extend(self.entry(key, value, (*path, str(key))))
        return items[0] if len(items) == 1 else AllOf(tuple(items))

    def entry(self, key: object, value: object, path: Path) -> list[Condition]:
        name = str(key)
        if name in _COMBINATORS:
            return [self.combinator(name, value, path)]
        spec = field_spec(name)
        if spec is None:
            fields = ", ".join(FIELD_NAMES)
            self.fail(path, f"unknown field {name!r}{self.where} "
                      f"(fields: {fields}; combinators: any, all, not)")
            return []
        return list(self.field_tests(spec, value, path))

    def combinator(self, name: str, value: object, path: Path) -> Condition:
        if isinstance(value, list):
            if not value:
                self.fail(path, f"'{name}'{self.where} needs at least one condition")
            branches = [self.block(item, (*path, i)) for i, item in enumerate(value)]
        elif isinstance(value, Mapping) and value:
            if name == "any":
                # Each field is one branch; the operators of one field must still all hold together.
                tests = [self.entry(k, v, (*path, str(k))) for k, v in value.items()]
                branches = [t[0] if len(t) == 1 else AllOf(tuple(t)) for t in tests if t]
            else:
                branches = [self.block(value, path)]
        else:
            self.fail(path, f"'{name}'{self.where} takes a mapping of field tests or a list of them, "
                      f"not {_type_name(value)}")
            return ALWAYS
        if name == "any":
            return AnyOf(tuple(branches))
        joined = branches[0] if len(branches) == 1 else AllOf(tuple(branches))
        return joined if name == "all" else Not(joined)

    def field_tests(self, spec: FieldSpec, raw: object, path: Path) -> list[FieldTest]:
        if isinstance(raw, Mapping):
            return self.operator_tests(spec, raw, path)
        if isinstance(raw, list):
            value = self.one_of(spec, "in", raw, path)
            return [] if value is None else [FieldTest(spec.name, "in", value, None, path)]
        scalar = self.scalar(spec, "eq", raw, path)
        return [] if scalar is None else [FieldTest(spec.name, "eq", scalar, None, path)]

    def operator_tests(self, spec: FieldSpec, raw: Mapping[Any, Any], path: Path) -> list[FieldTest]:
        allowed = OPERATORS[spec.kind]
        currency: str | None = None
        if "currency" in raw:
            if spec.kind is not Kind.MONEY:
                self.fail((*path, "currency"), f"'currency' only applies to mrr and ltv, not to "
                          f"{spec.name!r}{self.where}")
            else:
                currency = parse_currency(raw["currency"])
                if currency is None:
                    self.fail((*path, "currency"), f"currency of {spec.name!r}{self.where} must be a "
                              f"three-letter code such as usd, not {_type_name(raw['currency'])}")
        tests: list[FieldTest] = []
        # YAML keys need not be strings (`1000: 2`): name them as text, read them by the key itself.
        operators = [(str(k), v) for k, v in raw.items() if k != "currency"]
        if not operators:
            self.fail(path, f"{spec.name!r}{self.where} has no operator (operators for {spec.name}: "
                      f"{', '.join(allowed)})")
        for op, value in operators:
            op_path = (*path, op)
            if op not in allowed:
                kind = "unknown operator" if op not in ALL_OPERATORS else "operator not valid"
                self.fail(op_path, f"{kind} {op!r} for {spec.name!r}{self.where} "
                          f"(operators for {spec.name}: {', '.join(allowed)})")
                continue
            parsed: Scalar | tuple[Scalar, ...] | None
            if op == "exists":
                parsed = value if isinstance(value, bool) else None
                if parsed is None:
                    self.fail(op_path, f"'exists' of {spec.name!r}{self.where} takes true or false, "
                              f"not {_type_name(value)}")
            elif op in ("in", "not_in"):
                parsed = self.one_of(spec, op, value, op_path)
            elif op == "contains":
                parsed = self.contained(spec, value, op_path)
            else:
                parsed = self.scalar(spec, op, value, op_path)
            if parsed is not None:
                tests.append(FieldTest(spec.name, op, parsed, currency, op_path))
        return tests

    def one_of(self, spec: FieldSpec, op: str, raw: object, path: Path) -> tuple[Scalar, ...] | None:
        if spec.kind is Kind.MONEY:
            self.fail(path, f"{spec.name!r}{self.where} cannot be tested against a list; use gt, gte, lt "
                      f"or lte with a currency")
            return None
        if not isinstance(raw, list) or not raw:
            self.fail(path, f"{op!r} of {spec.name!r}{self.where} takes a non-empty list, "
                      f"not {_type_name(raw)}")
            return None
        values = [self.scalar(spec, op, item, (*path, i)) for i, item in enumerate(raw)]
        if any(v is None for v in values):
            return None
        return tuple(v for v in values if v is not None)

    def contained(self, spec: FieldSpec, raw: object, path: Path) -> Scalar | None:
        if spec.kind is Kind.WORDS:
            return self.scalar(spec, "contains", raw, path)
        if not isinstance(raw, str) or not raw:
            self.fail(path, f"'contains' of {spec.name!r}{self.where} takes text, not {_type_name(raw)}")
            return None
        return raw

    def scalar(self, spec: FieldSpec, op: str, raw: object, path: Path) -> Scalar | None:
        """One value checked against the field's kind; None (with a problem recorded) when wrong."""
        bad = f"wrong value for {spec.name!r}{self.where}: "
        kind = spec.kind
        if kind is Kind.BOOL:
            if isinstance(raw, bool):
                return raw
            self.fail(path, bad + f"{_type_name(raw)} is not true or false")
        elif kind is Kind.DAYS:
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
            self.fail(path, bad + f"{_type_name(raw)} is not a whole number of days")
        elif kind is Kind.MONEY:
            # Beyond _MAX_AMOUNT the decimal arithmetic (28 digits) of formatting would overflow.
            if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw) \
                    and abs(raw) < _MAX_AMOUNT:
                return Decimal(str(raw))
            self.fail(path, bad + f"{_type_name(raw)} is not an amount in major units (e.g. 1000)")
        elif kind is Kind.TEXT:
            if isinstance(raw, str | int) and not isinstance(raw, bool):
                return str(raw)  # metadata values are strings: `tier: 3` means "3"
            self.fail(path, bad + f"{_type_name(raw)} is not text")
        elif spec.name == "currency":
            code = parse_currency(raw)
            if code is not None:
                return code
            self.fail(path, bad + f"{_type_name(raw)} is not a three-letter currency code such as usd")
        elif isinstance(raw, str) and (not spec.choices or raw in spec.choices):
            return raw
        else:
            self.fail(path, bad + f"{_type_name(raw)} is not one of {', '.join(spec.choices)}")
        return None


def parse_when(raw: object, where: str) -> tuple[Condition, list[Problem]]:
    """The condition tree of a ``when`` block and the problems found (paths relative to the block)."""
    parser = _Parser(where)
    condition = parser.block(raw, ())
    return condition, parser.problems


def field_tests(condition: Condition) -> list[FieldTest]:
    """Every field test inside a condition, in file order."""
    if isinstance(condition, FieldTest):
        return [condition]
    if isinstance(condition, Not):
        return field_tests(condition.item)
    return [t for item in condition.items for t in field_tests(item)]
