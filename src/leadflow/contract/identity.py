"""Identity keys: how records find the lead they belong to.

Emails are normalised (trimmed, lower-cased, syntax-checked by ``email-validator``) and phones
to E.164 by ``phonenumbers``. A key is ``kind:value``; index aggregates are keyed by
``uuid5`` of it, so the same person always maps to the same index, on every replay.

A plain ASCII address that ``email-validator`` would accept unchanged but for case is
recognised without it (``_plain_email``): importing it compiles its regular expressions
(~20 ms), which `leadflow lead show anna@acme.io` need not pay.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache
from uuid import UUID

from leadflow.domain.ids import IDENTITY_KINDS, identity_key


@cache
def _non_personal_types() -> frozenset[int]:
    """Numbers that reach a company rather than a person (seed 002: a switchboard is
    interest, not a lead). Toll-free and shared-cost lines are company lines by construction.
    """
    import phonenumbers

    types = phonenumbers.PhoneNumberType
    return frozenset({types.TOLL_FREE, types.PREMIUM_RATE, types.SHARED_COST, types.UAN})


class InvalidIdentityError(ValueError):
    """An email or phone that cannot identify a person."""


@lru_cache(maxsize=65536)
def normalise_email(value: str) -> str:
    text = value.strip()
    plain = _plain_email(text)
    if plain is not None:
        return plain
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidIdentityError(f"invalid email {value!r}: {exc}") from exc
    normalized = result.normalized.lower()
    if not normalized.isascii():
        _refuse_lookalikes(value, normalized)
    return normalized


# What email-validator 2.4 (syntax.py; the options normalise_email uses: no quoted local
# part, no domain literal, no display name, globally deliverable, not a test environment)
# returns unchanged for an ASCII address: a dot-atom local part (RFC 5322 atext) and a
# domain of LDH labels, each starting and ending with a letter or digit, at least two of
# them, the last ending with a letter. Its normalised form is then the address with the
# domain lower-cased (UTS #46 maps A-Z to a-z and nothing else here), so ours, lower-cased
# whole, is ``text.lower()``. tests/unit/test_email_fast_path.py compares both on generated
# addresses.
_ATEXT = r"[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_EMAIL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@(?:{_LABEL}\.)+{_LABEL}")
# email-validator's SPECIAL_USE_DOMAIN_NAMES: refused as the domain or as its suffix.
_SPECIAL_USE = ("arpa", "invalid", "local", "localhost", "onion", "test")


def _plain_email(text: str) -> str | None:
    """``text.lower()`` when ``text`` is an address email-validator accepts and returns
    unchanged but for case; None for anything else (email-validator decides those)."""
    if not (text.isascii() and len(text) <= 254 and _PLAIN_EMAIL.fullmatch(text)):
        return None
    lowered = text.lower()
    local, _, domain = lowered.partition("@")
    labels = domain.split(".")
    if (len(local) > 64 or len(domain) > 253 or not domain[-1].isalpha()
            or "xn--" in domain  # Punycode: email-validator decodes it (IDNA)
            or any(len(label) > 63 or label[2:4] == "--" for label in labels)
            or any(domain == name or domain.endswith("." + name) for name in _SPECIAL_USE)):
        return None
    return lowered


# Scripts whose letters look alike: "аcme.io" with a Cyrillic "а" is not acme.io, and a lead
# keyed by it would be a spoof of someone else's (UTS #39 calls this mixed-script confusion).
_CONFUSABLE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")


def _refuse_lookalikes(value: str, normalized: str) -> None:
    if unicodedata.normalize("NFKC", normalized) != normalized:
        raise InvalidIdentityError(
            f"invalid email {value!r}: contains compatibility characters (full-width or "
            f"styled letters); write it as {unicodedata.normalize('NFKC', normalized)!r}")
    local, _, domain = normalized.rpartition("@")
    for part in [local, *domain.split(".")]:
        scripts = {name.split(" ", 1)[0] for name in
                   (unicodedata.name(ch, "") for ch in part if ch.isalpha())}
        mixed = scripts.intersection(_CONFUSABLE_SCRIPTS)
        if len(mixed) > 1:
            raise InvalidIdentityError(
                f"invalid email {value!r}: {part!r} mixes {' and '.join(sorted(mixed)).lower()} "
                "letters (a look-alike of another address)")


@lru_cache(maxsize=65536)
def normalise_phone(value: str, default_region: str | None = None) -> str:
    """E.164 form of a person's phone number; international format unless a region is given."""
    # Imported here: its data modules take ~30 ms to load, and a command that reads no phone
    # (`lead show anna@acme.io`) need not pay for them.
    import phonenumbers

    try:
        number = phonenumbers.parse(value.strip(), default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentityError(f"invalid phone {value!r}: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentityError(f"invalid phone {value!r}: not a valid number")
    if phonenumbers.number_type(number) in _non_personal_types():
        raise InvalidIdentityError(
            f"invalid phone {value!r}: toll-free/shared-cost numbers reach a company, not a person"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)



# A lead id as leadflow prints it (``lead show --json`` "lead_id"): the 8-4-4-4-12 form only,
# so that other hex strings (a 32-digit hash used as a CRM id) stay external ids.
_LEAD_ID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def is_lead_id(text: str) -> bool:
    return _LEAD_ID.fullmatch(text) is not None


def parse_identity_argument(text: str) -> str:
    """Turn a CLI argument into what ``LeadflowApp.resolve`` takes: an identity key
    (``kind:value``) for an email, a ``+E.164`` phone or ``kind:value``; a lead id (a UUID as
    leadflow prints it, bare or as ``lead:<uuid>``) in its canonical lower-case form.

    A bare UUID is returned as a lead id. An external id that looks like one stays reachable
    as ``external_id:<uuid>``, and the CLI tries that when no lead has the id.
    """
    text = text.strip()
    if not text:
        raise InvalidIdentityError("empty identity: give an email, a +E.164 phone, a lead id "
                                   "or kind:value")
    if text[:5].lower() == "lead:":
        value = text[5:].strip()
        if not is_lead_id(value):
            raise InvalidIdentityError(f"invalid lead id {value!r}: expected a UUID as "
                                       "printed by leadflow (lead show --json: lead_id)")
        return str(UUID(value))
    if is_lead_id(text):
        return str(UUID(text))
    for kind in IDENTITY_KINDS:
        if text.startswith(kind + ":"):
            value = text[len(kind) + 1 :]
            if kind == "email":
                value = normalise_email(value)
            elif kind == "phone":
                value = normalise_phone(value)
            return identity_key(kind, value)
    if "@" in text:
        return identity_key("email", normalise_email(text))
    if text.startswith("+"):
        return identity_key("phone", normalise_phone(text))
    return identity_key("external_id", text)
