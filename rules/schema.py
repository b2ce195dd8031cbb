"""The rules file as pydantic models (the YAML shape is the contract in ARCHITECTURE.md)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from billing.domain.money import exponent, to_minor
from rules.conditions import (
    ALWAYS,
    Condition,
    FieldTest,
    Path,
    Problem,
    field_tests,
    parse_currency,
    parse_when,
)
from rules.fields import FIELDS, Kind

Priority = Literal["low", "normal", "high", "urgent"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
TransitionName = Literal[
    "subscription.past_due",
    "subscription.recovered",
    "subscription.canceled",
    "subscription.trial_will_end",
    "invoice.payment_failed",
    "subscription.renewal_upcoming",
    "subscription.trial_ending",
]
TRANSITIONS: tuple[str, ...] = get_args(TransitionName)
# Reminders are sent ``days_before`` their date; an alert that does not say is sent this many days ahead.
DEFAULT_DAYS_BEFORE: dict[str, int] = {"subscription.renewal_upcoming": 7, "subscription.trial_ending": 3}
MAX_DAYS_BEFORE = 365


def problems_error(problems: list[Problem]) -> PydanticCustomError:
    """Carry several located problems through one pydantic error (the loader unpacks ``problems``)."""
    return PydanticCustomError("rules_problems", "{message}",
                               {"message": problems[0].message, "problems": problems})


def _currency(raw: object) -> str:
    code = parse_currency(raw)
    if code is None:
        raise PydanticCustomError("currency", "{value} is not a three-letter currency code such as usd",
                                  {"value": repr(raw)})
    return code


Currency = Annotated[str, BeforeValidator(_currency)]


def _word_list(raw: object) -> object:
    return [raw] if isinstance(raw, str) else raw


def _priority(raw: object) -> object:
    if raw not in PRIORITIES:
        raise PydanticCustomError("priority", "bad priority {value} (priorities: {accepted})",
                                  {"value": repr(raw), "accepted": ", ".join(PRIORITIES)})
    return raw


NonEmpty = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Actions(_Model):
    """What a matching rule does. ``tags`` and ``notify`` take one word or a list."""

    assign: NonEmpty | None = None
    priority: Annotated[Priority | None, BeforeValidator(_priority)] = None
    tags: Annotated[list[NonEmpty], BeforeValidator(_word_list)] = Field(default_factory=list)
    notify: Annotated[list[NonEmpty], BeforeValidator(_word_list)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> Actions:
        if self.assign is None and self.priority is None and not self.tags and not self.notify:
            raise PydanticCustomError("no_actions", "no action (actions: assign, priority, tags, notify)")
        return self


def money_problems(condition: Condition, default_currency: str | None, where: str) -> list[Problem]:
    """Money tests without a currency (and no file default), or finer than their currency allows."""
    problems: list[Problem] = []
    for test in field_tests(condition):
        spec = FIELDS.get(test.field)
        if spec is None or spec.kind is not Kind.MONEY or test.op == "exists":
            continue
        currency = test.currency or default_currency
        if currency is None:
            problems.append(Problem(test.path, f"{test.field!r}{where} needs a currency: write "
                                    f"{{gt: 1000, currency: usd}} or set default_currency at the top"))
        elif isinstance(test.value, Decimal) and to_minor(test.value, currency) % 1:
            problems.append(Problem(test.path, f"{test.value} {currency.upper()}{where} is finer than "
                                    f"{currency.upper()} allows ({exponent(currency)} decimal places)"))
    return problems


def _located(at: Path, problems: list[Problem]) -> list[Problem]:
    return [Problem((*at, *p.path), p.message) for p in problems]


def _parse_condition(raw: object, info: ValidationInfo, label: str) -> Condition:
    name = info.data.get("name") or info.data.get("on")
    where = f" in {label} {name!r}" if name else ""
    condition, problems = parse_when(raw, where)
    if isinstance(info.context, dict) and "default_currency" in info.context:
        problems += money_problems(condition, info.context["default_currency"], where)
    if problems:
        raise problems_error(problems)
    return condition


class Rule(_Model):
    name: NonEmpty
    description: str | None = None
    when: SkipValidation[Condition]
    then: Actions

    @field_validator("when", mode="before")
    @classmethod
    def _when(cls, raw: object, info: ValidationInfo) -> Condition:
        return _parse_condition(raw, info, "rule")


def _transition(raw: object) -> object:
    if raw not in TRANSITIONS:
        raise PydanticCustomError("transition", "unknown transition {value} (transitions: {accepted})",
                                  {"value": repr(raw), "accepted": ", ".join(TRANSITIONS)})
    return raw


class Alert(_Model):
    """Post to ``channel`` when transition ``on`` happens to a customer for whom ``when`` holds.

    An empty channel (``"${BILLING_ALERT_CHANNEL:-}"`` with the variable unset) turns the alert off.
    A reminder (``subscription.renewal_upcoming``, ``subscription.trial_ending``) is sent ``days_before``
    its date (default ``DEFAULT_DAYS_BEFORE``).
    """

    on: Annotated[TransitionName, BeforeValidator(_transition)]
    name: NonEmpty | None = None
    when: SkipValidation[Condition] = ALWAYS
    channel: str
    days_before: SkipValidation[int | None] = None

    @field_validator("when", mode="before")
    @classmethod
    def _when(cls, raw: object, info: ValidationInfo) -> Condition:
        return _parse_condition(raw, info, "alert")

    @field_validator("days_before", mode="before")
    @classmethod
    def _days_before(cls, raw: object, info: ValidationInfo) -> int | None:
        on, name = info.data.get("on"), info.data.get("name")
        label = repr(name or on) if name or on else "this alert"
        if raw is None:
            return None
        if on is not None and on not in DEFAULT_DAYS_BEFORE:
            raise problems_error([Problem((), f"days_before in alert {label} applies only to "
                                          f"{' and '.join(DEFAULT_DAYS_BEFORE)}, not to {on}")])
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_DAYS_BEFORE:
            shown = "a list" if isinstance(raw, list) else "a mapping" if isinstance(raw, dict) else \
                str(raw).lower() if isinstance(raw, bool) else repr(raw)
            raise problems_error([Problem((), f"days_before in alert {label} must be a whole number of "
                                          f"days from 1 to {MAX_DAYS_BEFORE}, not {shown}")])
        return raw

    @property
    def label(self) -> str:
        return self.name or self.on

    @property
    def lead_days(self) -> int | None:
        """How many days before its date this reminder alert is sent (None: not a reminder)."""
        default = DEFAULT_DAYS_BEFORE.get(self.on)
        return None if default is None else self.days_before or default


class ExchangeRates(_Model):
    """``rates[c]`` is the value of one unit of ``c`` in ``base``: ``{base: usd, rates: {eur: 1.08}}``
    reads "1 EUR = 1.08 USD". Conversions between two non-base currencies go through ``base``."""

    base: Currency
    rates: dict[Currency, Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]]

    def rate(self, source: str, target: str) -> Decimal | None:
        """How many ``target`` one ``source`` is worth, or None when the table cannot say."""
        in_base = {self.base: Decimal(1), **self.rates}
        if source not in in_base or target not in in_base:
            return None
        return in_base[source] / in_base[target]


class RulesFile(_Model):
    version: Literal[1]
    default_currency: Currency | None = None
    exchange_rates: ExchangeRates | None = None
    rules: list[Rule] = Field(default_factory=list)
    alerts: list[Alert] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> RulesFile:
        problems: list[Problem] = []
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                problems.append(Problem(("rules", i, "name"), f"duplicate rule name {rule.name!r}"))
            seen.add(rule.name)
            problems += _located(("rules", i, "when"), money_problems(
                rule.when, self.default_currency, f" in rule {rule.name!r}"))
        for i, alert in enumerate(self.alerts):
            problems += _located(("alerts", i, "when"), money_problems(
                alert.when, self.default_currency, f" in alert {alert.label!r}"))
        if problems:
            raise problems_error(problems)
        return self

    def lead_times(self) -> dict[str, frozenset[int]]:
        """Per reminder transition, the ``days_before`` of its alerts that are on (have a channel):
        the moments the scheduler reminds at."""
        leads: dict[str, set[int]] = {}
        for alert in self.alerts:
            if alert.lead_days is not None and alert.channel:
                leads.setdefault(alert.on, set()).add(alert.lead_days)
        return {name: frozenset(days) for name, days in leads.items()}

    def money_currency(self, test: FieldTest) -> str:
        """The currency a money test compares in (its own, else the file's default)."""
        currency = test.currency or self.default_currency
        assert currency is not None, "validated at load"
        return currency

