"""Query parameters as the stripe SDK encodes them (``expand[0]=…``, ``created[gte]=…``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sandbox.errors import bad_request

Params = dict[str, Any]

_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SUB = re.compile(r"\[([^\[\]]*)\]")


def parse_params(items: Iterable[tuple[str, str]]) -> Params:
    """Fold ``a[0]=x``/``a[]=x`` into lists and ``a[k]=x`` into dicts (one level, like Stripe's GETs)."""
    out: Params = {}
    for key, value in items:
        match = _KEY.fullmatch(key)
        if match is None:
            raise bad_request(f"Invalid parameter name: {key}.", param=key)
        name, subs = match.group(1), _SUB.findall(match.group(2))
        if not subs:
            out[name] = value
        elif len(subs) == 1 and (subs[0] == "" or subs[0].isdigit()):
            existing = out.setdefault(name, [])
            if not isinstance(existing, list):
                raise bad_request(f"Invalid array: {name}.", param=name)
            existing.append(value)
        elif len(subs) == 1:
            existing = out.setdefault(name, {})
            if not isinstance(existing, dict):
                raise bad_request(f"Invalid hash: {name}.", param=name)
            existing[subs[0]] = value
        else:
            raise bad_request(f"Received unknown parameter: {key}.", param=key)
    return out


def as_int(value: Any, param: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise bad_request(f"Invalid integer: {value}", param=param) from None


def as_str(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"Invalid string: {param} must be a single string value.", param=param)
    return value


def as_list(value: Any, param: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise bad_request(f"Invalid array: {param} must be a list of strings.", param=param)


def as_bool(value: Any, param: str) -> bool:
    text = str(value).lower()
    if text not in ("true", "false"):
        raise bad_request(f"Invalid boolean: {value}", param=param)
    return text == "true"


def check_known(params: Params, allowed: Iterable[str]) -> None:
    known = set(allowed)
    for name in params:
        if name not in known:
            raise bad_request(f"Received unknown parameter: {name}", param=name)


def created_predicate(
    value: Any, param: str = "created"
) -> tuple[int | None, int | None, int | None, int | None]:
    """``created=5`` or ``created[gt|gte|lt|lte]=…`` as (gt, gte, lt, lte)."""
    if isinstance(value, dict):
        unknown = set(value) - {"gt", "gte", "lt", "lte"}
        if unknown:
            raise bad_request(
                f"Received unknown parameter: {param}[{sorted(unknown)[0]}]; accepted are gt, gte, lt, lte.",
                param=param,
            )
        bounds = {k: as_int(v, f"{param}[{k}]") for k, v in value.items()}
        return bounds.get("gt"), bounds.get("gte"), bounds.get("lt"), bounds.get("lte")
    exact = as_int(value, param)
    return None, exact, None, exact


def in_range(ts: int, bounds: tuple[int | None, int | None, int | None, int | None]) -> bool:
    gt, gte, lt, lte = bounds
    return (
        (gt is None or ts > gt)
        and (gte is None or ts >= gte)
        and (lt is None or ts < lt)
        and (lte is None or ts <= lte)
    )
