"""Masking emails and phone numbers in text that leaves leadflow: logs, one-line errors, and
the free text (reasons, landing URLs) of the analysts' read models.

A log line outlives every request to erase a person (it is shipped, indexed and kept by
systems leadflow cannot reach), so what identifies a person never goes into one:

- an email keeps its first character and its domain: ``anna.smith@acme.io`` →
  ``a***@acme.io`` (also when written ``anna%40acme.io`` in a URL). The domain is the
  company, which operators need to tell whose records fail; the person is gone.
- a phone number keeps ``+``, the first two digits after it (the country, mostly) and the
  last two: ``+44 20 7946 0958`` → ``+44********58``; without ``+``: ``********58``.

Masking, not a keyed hash: a hash of an email can be confirmed by anyone who guesses the
address and holds the key, and a log reader needs no correlation that the line numbers,
event ids and lead ids in the same line do not already give.

What counts as a phone: a run of at least 7 digits that starts with ``+``, or whose digits
are grouped by spaces, dots, dashes, slashes or parentheses (``(415) 555-0100``,
``020 7946 0958``), or that is the whole of a quoted value (``'4155550100'``, as reject
details quote what they refuse). A bare unquoted digit run (``1048576``) is a count, a size
or an offset and is left alone, as are dates (``2026-03-02 09:00``), IPv4 addresses, decimal
numbers and UUIDs. Masking is idempotent: masked text masks to itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

# Characters that end an email's local part or domain in running text: whitespace, quotes,
# brackets and the separators of URLs, key=value pairs and lists (an address holding one
# keeps what precedes it, but never its at sign unmasked). "%" ends the local part so
# that "anna%40acme.io" is read with %40 as the at sign.
_EMAIL = re.compile(
    r"(?P<local>[^\s@\"'`<>()\[\]{},;:/\\=?&%|]*)(?:@|%40)"
    r"(?P<domain>[^\s@\"'`<>()\[\]{},;/\\?&=#%|]*)"
)
# A candidate phone: optional "+" or "(", a digit, then digits joined by at most two
# separators each. Not glued to a word, a UUID's hex or a masked value before or after.
_PHONE = re.compile(
    r"(?<![\w+*\-./])(?:\+\s?|\(\+?)?\d(?:[ \t.\-/()]{0,2}\d)+(?![\w*]|[-.]\w)"
)
_UUID = re.compile(r"\d{8}-\d{4}-\d{4}-\d{4}-\d{12}\Z")
_DATE = re.compile(r"\(?\d{4}-\d{1,2}-\d{1,2}(?!\d)|\d{1,2}/\d{1,2}/\d{2,4}\Z")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}\Z")
_DECIMAL = re.compile(r"\d+\.\d+\Z")
_QUOTES = frozenset("'\"`")
MIN_PHONE_DIGITS = 7


def _mask_email(match: re.Match[str]) -> str:
    local, domain = match["local"], match["domain"]
    if not local:
        # The address's last character is one that also ends words ("{@acme.io", an email
        # whose local part is all symbols): mask what is certain. A lone "@" stays.
        return f"***@{domain}" if domain else match.group(0)
    if local == "***" or (len(local) == 4 and local.endswith("***")):
        return match.group(0)  # already masked, or a URL's password redacted as ***
    return f"{local[0]}***@{domain}"


def _mask_phone(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = [c for c in run if c.isdigit()]
    if len(digits) < MIN_PHONE_DIGITS:
        return run
    international = run.lstrip("(").startswith("+")
    if not international:
        if _DATE.match(run) or any(p.match(run) for p in (_IPV4, _DECIMAL, _UUID)):
            return run
        grouped = any(not c.isdigit() for c in run)
        text, start, end = match.string, match.start(), match.end()
        quoted = (start > 0 and end < len(text) and text[start - 1] in _QUOTES
                  and text[end] == text[start - 1])
        if not (grouped or quoted):
            return run
    # A "(" that opened text around the number ("(+44 20 …)") is not the number's.
    opened = "(" if run.startswith("(") and ")" not in run else ""
    head = opened + ("+" + "".join(digits[:2]) if international else "")
    hidden = len(digits) - 2 - (2 if international else 0)
    return f"{head}{'*' * hidden}{''.join(digits[-2:])}"


def mask_text(text: str) -> str:
    """``text`` with every email and phone number masked (see the module's docstring)."""
    if "@" in text or "%40" in text:
        text = _EMAIL.sub(_mask_email, text)
    return _PHONE.sub(_mask_phone, text)


def mask_value(value: Any) -> Any:
    """A log value with its emails and phones masked: strings, and the keys and values of
    mappings, lists, tuples and sets at any depth. Other objects (an exception, a path)
    are rendered as text only when that text needs masking; numbers are never phones."""
    if isinstance(value, str):
        return mask_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {mask_value(k): mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_value(v) for v in value) if type(value) in (list, tuple) \
            else [mask_value(v) for v in value]
    if isinstance(value, set | frozenset):
        return {mask_value(v) for v in value}
    try:
        text = str(value)
    except Exception:  # a value whose __str__ fails is logged as the renderer shows it
        return value
    masked = mask_text(text)
    return value if masked == text else masked


def mask_personal_data(_logger: Any, _method: str,
                       event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every key and value of the event, masked. Registered in
    ``leadflow.logs`` just before the renderer, so bound context and formatted exceptions
    are masked too."""
    masked: MutableMapping[str, Any] = {}
    for key, value in event_dict.items():
        masked[mask_text(key) if isinstance(key, str) else key] = mask_value(value)
    return masked
