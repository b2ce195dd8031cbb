"""Putting untrusted text into Slack ``mrkdwn`` safely. Pure string functions, no Slack objects.

Slack parses ``<…>`` in mrkdwn (and in a message's fallback ``text``) as links and mentions:
``<!channel>`` pings a channel, ``<https://x|click>`` is a link. Slack decodes only three entities,
``&amp;`` ``&lt;`` ``&gt;``, so escaping ``& < >`` is enough to show any text as typed. Every piece of
Stripe or user text that reaches mrkdwn goes through :func:`escape_mrkdwn`; the only ``<…>`` in our
messages are the ones built here from validated parts (:func:`link`, :func:`user_mention`,
:func:`channel_mention`).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

ELLIPSIS = "…"
MAX_URL = 3000  # Slack's limit for a button or link url

_WHITESPACE = re.compile(r"\s+")
# C0/C1 controls and the bidi overrides that can make a name display as something else
# ("\u202egnp.exe" shows as "exe.png"); newlines are folded to spaces before this runs.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_USER_ID = re.compile(r"[UW][A-Z0-9]{2,30}")
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,30}")


def escape_mrkdwn(text: str) -> str:
    """``&`` then ``<`` then ``>`` as entities: ``<!channel>`` is shown, never pings.

    ``&`` goes first so already-escaped input (``&lt;``) is shown as typed, not decoded.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def one_line(text: str) -> str:
    """Whitespace runs (newlines included) as one space, invisible controls dropped, trimmed.

    A name with a newline could otherwise start a line of its own and pose as a field of the card.
    """
    return _INVISIBLE.sub("", _WHITESPACE.sub(" ", text)).strip()


def text_length(text: str) -> int:
    """Length in UTF-16 code units: never less than ``len(text)``, and what a JavaScript-side limit counts.

    Slack does not say how it counts; measuring the larger way keeps an emoji-heavy name in bounds
    whichever way it is.
    """
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def _prefix(text: str, budget: int) -> str:
    """The longest start of ``text`` whose :func:`text_length` is at most ``budget``."""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > budget:
            return text[:index]
    return text


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (UTF-16 units, see :func:`text_length`), ending in
    "…" when cut."""
    if text_length(text) <= limit:
        return text
    if limit <= 0:
        return ""
    return _prefix(text, limit - 1).rstrip() + ELLIPSIS


def truncate_mrkdwn(text: str, limit: int) -> str:
    """Like :func:`truncate`, but never leaves half a ``<link|label>`` or half an ``&amp;`` behind.

    A cut inside ``<https://…|label>`` would show raw markup; inside ``&lt;`` a stray ``&l``.
    """
    if text_length(text) <= limit:
        return text
    if limit <= 0:
        return ""
    kept = _prefix(text, limit - 1)
    opened = kept.rfind("<")
    if opened > kept.rfind(">"):
        kept = kept[:opened]
    amp = kept.rfind("&")
    if amp != -1 and ";" not in kept[amp:]:
        kept = kept[:amp]
    return kept.rstrip() + ELLIPSIS


def inline(text: str, limit: int | None = None) -> str:
    """Untrusted text as one escaped mrkdwn line, optionally cut (before escaping, so no entity is cut)."""
    flat = one_line(text)
    if limit is not None:
        flat = truncate(flat, limit)
    return escape_mrkdwn(flat)


def safe_url(url: str | None) -> str | None:
    """``url`` when it can sit inside ``<url|label>`` or a button: https, a host, no markup characters."""
    if not url or len(url) > MAX_URL or not url.startswith("https://"):
        return None
    if any(c in url for c in "|<>\"` ") or _WHITESPACE.search(url) or _INVISIBLE.search(url):
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return url if host else None


def link(url: str | None, label: str, *, limit: int = 80) -> str:
    """``<url|label>`` with the label escaped; only the escaped label when the url is not safe."""
    shown = inline(label, limit) or "link"
    checked = safe_url(url)
    return f"<{checked}|{shown}>" if checked else shown


def user_mention(user_id: str) -> str:
    """``<@U123>`` for a real Slack user id; anything else is shown as escaped text."""
    return f"<@{user_id}>" if _USER_ID.fullmatch(user_id) else inline(user_id, 40)


def channel_mention(channel: str) -> str:
    """``<#C123>`` for a channel id; a channel name (``#billing``) or anything else as escaped text."""
    return f"<#{channel}>" if _CHANNEL_ID.fullmatch(channel) else inline(channel, 80)
