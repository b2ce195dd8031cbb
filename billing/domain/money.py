"""Currency exponents and money formatting. Never a blanket ÷100."""

from __future__ import annotations

from decimal import Decimal

ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def exponent(currency: str) -> int:
    """Number of minor-unit digits of a currency (jpy 0, usd 2, kwd 3)."""
    code = currency.lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_major(amount_minor: int, currency: str) -> Decimal:
    """Minor units to an exact major-unit Decimal: (2900, usd) -> 29.00."""
    exp = exponent(currency)
    return (Decimal(amount_minor) / (Decimal(10) ** exp)).quantize(Decimal(1).scaleb(-exp))


def to_minor(amount_major: Decimal | int | float | str, currency: str) -> Decimal:
    """Major units to minor units, exactly (a rule threshold of 1000 usd is 100000)."""
    return Decimal(str(amount_major)) * (Decimal(10) ** exponent(currency))


def format_money(amount_minor: int, currency: str) -> str:
    """Human text with thousands separators: (125000, usd) -> '1,250.00 USD'."""
    exp = exponent(currency)
    major = to_major(amount_minor, currency)
    return f"{major:,.{exp}f} {currency.upper()}"
