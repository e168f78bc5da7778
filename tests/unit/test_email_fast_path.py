"""The plain-address fast path of ``normalise_email`` (``contract/identity.py``) answers as
email-validator would: for every address it takes, email-validator accepts the address and
its normalised form, lower-cased, is the fast path's answer; every other address still goes
to email-validator. Addresses are generated near each rule the fast path relies on: atext
and dots in the local part, LDH labels, the TLD's last letter, special-use names, Punycode
and R-LDH labels, length limits, case, and characters email-validator refuses or rewrites.
"""

from __future__ import annotations

import string

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from leadflow.contract.identity import InvalidIdentityError, _plain_email, normalise_email

ATEXT = string.ascii_letters + string.digits + "_!#$%&'*+-/=?^`{|}~"
LDH = string.ascii_letters + string.digits + "-"
# What an address should not hold, or holds in the forms email-validator rewrites.
ODD = " \"(),:;<>@[\\]\t\n.\x00\x7f\u00e9\u0430\uff21\u212a\u017f\u0130\u00df\uff0e\u3002"
SPECIAL = ["arpa", "invalid", "local", "localhost", "onion", "test", "example", "com"]


def _cased(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def local_parts(draw: st.DrawFn) -> str:
    empty = draw(st.integers(0, 9)) == 0  # an empty atom: a leading, trailing or double dot
    atoms = draw(st.lists(st.text(ATEXT, min_size=0 if empty else 1, max_size=12), min_size=1,
                          max_size=4))
    local = ".".join(atoms)
    if draw(st.integers(0, 9)) == 0:  # near the 64-character limit
        local = (local or "a") * draw(st.integers(1, 70))
        local = local[:draw(st.integers(60, 70))]
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(local)))
        local = local[:at] + draw(st.text(ODD, min_size=1, max_size=2)) + local[at:]
    return local


@st.composite
def labels(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return "xn--" + draw(st.text(string.ascii_lowercase + string.digits, max_size=8))
    if kind == 1:  # R-LDH: two characters, then two hyphens
        return draw(st.text(LDH, min_size=2, max_size=2)) + "--" + draw(st.text(LDH, max_size=4))
    if kind == 2:  # near the 63-character label limit
        return draw(st.sampled_from(LDH[:-1])) * draw(st.integers(60, 66))
    if kind == 3:  # may be empty, or start or end with a hyphen
        return draw(st.text(LDH, min_size=0, max_size=10))
    return draw(st.text(string.ascii_letters + string.digits, min_size=1, max_size=3)) + \
        draw(st.text(LDH, max_size=8)) + draw(st.sampled_from(string.ascii_letters + "0"))


@st.composite
def domains(draw: st.DrawFn) -> str:
    parts = draw(st.lists(labels(), min_size=0, max_size=4))
    tld = draw(st.one_of(st.sampled_from(SPECIAL), st.text(LDH, min_size=0, max_size=6),
                         labels(), st.text(string.ascii_letters, min_size=2, max_size=6)))
    domain = ".".join([*parts, tld])
    if draw(st.integers(0, 9)) == 0:  # near the 253/254-character limits
        domain = ("a" * 60 + ".") * draw(st.integers(3, 5)) + domain
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(domain)))
        domain = domain[:at] + draw(st.text(ODD, min_size=1, max_size=2)) + domain[at:]
    return domain


@st.composite
def addresses(draw: st.DrawFn) -> str:
    text = _cased(draw, draw(local_parts()) + "@" + draw(domains()))
    return draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", " ", "\n"]))


def _by_email_validator(value: str) -> str | None:
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


def _check(value: str) -> None:
    text = value.strip()
    fast = _plain_email(text)
    if fast is not None:
        assert _by_email_validator(value) == fast, value
    # normalise_email as a whole agrees with email-validator on valid ASCII addresses and
    # refuses what it refuses (non-ASCII ones may also be refused as look-alikes).
    expected = _by_email_validator(value)
    try:
        got: str | None = normalise_email.__wrapped__(value)
    except InvalidIdentityError:
        got = None
    if text.isascii() or got is not None:
        assert got == expected, value


@settings(max_examples=1500, deadline=None)
@given(addresses())
@example("John.Doe@Example.COM")
@example("a@b.co")
@example("info@acme.io")
@example("x@y.test")
@example("x@mail.localhost")
@example("x@acme.io1")
@example("x@xn--bcher-kva.ch")
@example("x@ab--c.com")
@example("x@a.b-c")
@example(".x@acme.io")
@example("x.@acme.io")
@example("x..y@acme.io")
@example("x@-acme.io")
@example("x@acme-.io")
@example("x@acme..io")
@example("x@acme.io.")
@example("\"x\"@acme.io")
@example("x@[127.0.0.1]")
@example("Bob <x@acme.io>")
def test_the_fast_path_answers_as_email_validator(value: str) -> None:
    _check(value)


@settings(max_examples=400, deadline=None)
@given(st.text(ATEXT + ".@-" + ODD, max_size=40))
def test_the_fast_path_on_arbitrary_text(value: str) -> None:
    _check(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("John.Doe@Example.COM", "john.doe@example.com"),
    ("o'brien+tag@Mail.Acme.co.uk", "o'brien+tag@mail.acme.co.uk"),
    ("a@b.co", "a@b.co"),
])
def test_plain_addresses_take_the_fast_path(value: str, expected: str) -> None:
    assert _plain_email(value) == expected


@pytest.mark.parametrize("value", [
    "x@y.test", "x@a.localhost", "x@acme.io1", "x@xn--bcher-kva.ch", "x@ab--c.com",
    "x@localhost", "\"x\"@acme.io", "x@acme.io.", "j\u00f6rg@acme.io", "x@" + "a" * 64 + ".io",
    "a" * 65 + "@acme.io",
])
def test_other_addresses_are_left_to_email_validator(value: str) -> None:
    assert _plain_email(value) is None
