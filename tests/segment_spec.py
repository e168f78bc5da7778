"""Example payloads from Segment's published spec, for the tests of the Segment intake.

Each ``SPEC_*`` value is the example as the spec publishes it (Spec: Email Events, Spec: B2B
SaaS, Spec: Identify, HTTP Tracking API), copied verbatim, including the email spec's
``user_id``/``action`` spellings and the examples' lack of ``messageId`` and ``timestamp``.
``journey()`` is one person's path through those calls, dated, for scoring tests.
"""

from __future__ import annotations

import copy
from typing import Any

# Spec: Email Events -- Email Opened.
SPEC_EMAIL_OPENED: dict[str, Any] = {
    "user_id": "019mr8mf4r",
    "action": "track",
    "event": "Email Opened",
    "context": {
        "ip": "67.207.109.102",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_2) AppleWebKit/537.36 "
                      "(KHTML, like Gecko) Chrome/41.0.2272.118 Safari/537.36",
        "traits": {"email": "pgibbons@initech.com"},
    },
    "properties": {
        "email_id": "18vzF7u3z",
        "email_subject": "First shirt on us!",
        "campaign_id": "123",
        "campaign_name": "New Customer Discount",
    },
}

# Spec: Email Events -- Email Link Clicked.
SPEC_EMAIL_LINK_CLICKED: dict[str, Any] = {
    "user_id": "019mr8mf4r",
    "action": "track",
    "event": "Email Link Clicked",
    "context": {
        "ip": "67.207.109.102",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_2) AppleWebKit/537.36 "
                      "(KHTML, like Gecko) Chrome/41.0.2272.118 Safari/537.36",
        "traits": {"email": "joanna@chotchkies.com"},
    },
    "properties": {
        "email_id": "18vzF7u3z",
        "email_subject": "First shirt on us!",
        "campaign_id": "123",
        "campaign_name": "New Customer Discount",
        "link_id": "101",
        "link_url": "https://www.buymyshirts.com?promo=NEWCUSTOMER",
    },
}

# Spec: Email Events -- Unsubscribed.
SPEC_UNSUBSCRIBED: dict[str, Any] = {
    "user_id": "019mr8mf4r",
    "action": "track",
    "event": "Unsubscribed",
    "context": {
        "ip": "67.207.109.102",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_2) AppleWebKit/537.36 "
                      "(KHTML, like Gecko) Chrome/41.0.2272.118 Safari/537.36",
        "traits": {"email": "pgibbons@initech.com"},
    },
    "properties": {
        "email_id": "18vzF7u3z",
        "email_subject": "First shirt on us!",
        "campaign_id": "123",
        "campaign_name": "New Customer Discount",
        "list_id": "1425",
        "list_name": "New customers",
    },
}

# Spec: Email Events -- Email Bounced (nothing the person did: no default rule maps it).
SPEC_EMAIL_BOUNCED: dict[str, Any] = {
    "user_id": "019mr8mf4r",
    "action": "track",
    "event": "Email Bounced",
    "context": {
        "ip": "67.207.109.102",
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_2) AppleWebKit/537.36 "
                      "(KHTML, like Gecko) Chrome/41.0.2272.118 Safari/537.36",
        "traits": {"email": "pgibbons@initech.com"},
    },
    "properties": {
        "email_id": "18vzF7u3z",
        "email_subject": "First shirt on us!",
        "campaign_id": "123",
        "campaign_name": "New Customer Discount",
    },
}

# Spec: B2B SaaS -- Signed Up.
SPEC_SIGNED_UP: dict[str, Any] = {
    "userId": "019mr8mf4r",
    "action": "track",
    "event": "Signed Up",
    "properties": {
        "type": "organic",
        "first_name": "Peter",
        "last_name": "Gibbons",
        "email": "pgibbons@initech.com",
        "phone": "410-555-9412",
        "username": "pgibbons",
        "title": "Mr",
    },
    "context": {"groupId": "acct_123"},
}

# Spec: B2B SaaS -- Trial Started.
SPEC_TRIAL_STARTED: dict[str, Any] = {
    "userId": "019mr8mf4r",
    "action": "track",
    "event": "Trial Started",
    "properties": {
        "trial_start_date": "2018-08-28T04:09:47Z",
        "trial_end_date": "2018-09-20T04:09:47Z",
        "trial_plan_name": "Business",
    },
    "context": {"groupId": "acct_123"},
}

# Spec: B2B SaaS -- Account Created (an account, not a person's engagement: unmapped).
SPEC_ACCOUNT_CREATED: dict[str, Any] = {
    "userId": "019mr8mf4r",
    "action": "track",
    "event": "Account Created",
    "properties": {"account_name": "Initech"},
    "context": {"groupId": "acct_123"},
}

# Spec: Identify -- the complete example.
SPEC_IDENTIFY: dict[str, Any] = {
    "anonymousId": "507f191e810c19729de860ea",
    "channel": "browser",
    "context": {
        "ip": "8.8.8.8",
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_5) AppleWebKit/537.36 "
                     "(KHTML, like Gecko) Chrome/40.0.2214.115 Safari/537.36",
    },
    "integrations": {"All": False, "Mixpanel": True, "Salesforce": True},
    "messageId": "022bb90c-bbac-11e4-8dfc-aa07a5b093db",
    "receivedAt": "2015-02-23T22:28:55.387Z",
    "sentAt": "2015-02-23T22:28:55.111Z",
    "timestamp": "2015-02-23T22:28:55.111Z",
    "traits": {
        "name": "Peter Gibbons",
        "email": "peter@example.com",
        "plan": "premium",
        "logins": 5,
        "address": {"street": "6th St", "city": "San Francisco", "state": "CA",
                    "postalCode": "94103", "country": "USA"},
    },
    "type": "identify",
    "userId": "97980cfea0067",
    "version": "1.1",
}

# HTTP Tracking API -- the batch example (its third and fourth timestamps are not RFC 3339:
# "2015-2-02T...").
SPEC_BATCH: dict[str, Any] = {
    "batch": [
        {"type": "identify", "userId": "019mr8mf4r",
         "traits": {"email": "jake@yahoo.com", "name": "Jake Peterson", "age": 26},
         "timestamp": "2012-12-02T00:30:08.276Z"},
        {"type": "track", "userId": "019mr8mf4r", "event": "Song Played",
         "properties": {"name": "Fallin for You", "artist": "Dierks Bentley"},
         "timestamp": "2012-12-02T00:30:12.984Z"},
        {"type": "identify", "userId": "971mj8mk7p",
         "traits": {"email": "cindy@gmail.com", "name": "Cindy Gonzalez", "age": 23},
         "timestamp": "2015-2-02T00:30:08.276Z"},
        {"type": "track", "userId": "971mj8mk7p", "event": "Song Played",
         "properties": {"name": "Get Right", "artist": "Jennifer Lopez"},
         "timestamp": "2015-2-02T00:30:12.984Z"},
    ],
    "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}},
}


def dated(message: dict[str, Any], message_id: str, timestamp: str) -> dict[str, Any]:
    """A spec example as an SDK would send it: with a messageId and a timestamp."""
    out = copy.deepcopy(message)
    out["messageId"] = message_id
    out["timestamp"] = timestamp
    return out


#: The person of ``journey()``: a VP at a 20-person US company.
JOURNEY_EMAIL = "pat@initech.com"
#: Fit 25 (title-executive 15, size-11-50 5, country-target 5) + engagement 62 (pricing
#: page 15, email open 2, email click 5, sign-up form 15, trial 25), all at one instant so
#: nothing has decayed at ``JOURNEY_AT``. Over the MQL threshold (50); routed by size (11-50
#: employees: team mid, rep-b); never reached by the SQL auto-rule (no demo request).
JOURNEY_SCORE = 87.0
JOURNEY_AT = "2026-03-02T09:00:00+00:00"


def journey() -> list[dict[str, Any]]:
    """An anonymous pricing-page visit, then email engagement, sign-up and a trial, then the
    identify that links the cookie to the person (the visit is scored then), plus an event
    no rule maps. Every message is dated ``JOURNEY_AT``."""
    at = "2026-03-02T09:00:00Z"
    opened = dated(SPEC_EMAIL_OPENED, "j-open", at)
    opened["context"]["traits"]["email"] = JOURNEY_EMAIL
    clicked = dated(SPEC_EMAIL_LINK_CLICKED, "j-click", at)
    clicked["context"]["traits"]["email"] = JOURNEY_EMAIL
    signed_up = dated(SPEC_SIGNED_UP, "j-signup", at)
    signed_up["properties"]["email"] = JOURNEY_EMAIL
    trial = dated(SPEC_TRIAL_STARTED, "j-trial", at)
    return [
        {"type": "page", "anonymousId": "cookie-77", "name": "Pricing",
         "properties": {"url": "https://initech.com/pricing", "path": "/pricing"},
         "messageId": "j-page", "timestamp": at},
        opened, clicked, signed_up, trial,
        {"type": "identify", "userId": "019mr8mf4r", "anonymousId": "cookie-77",
         "traits": {"email": JOURNEY_EMAIL, "title": "VP Engineering", "firstName": "Pat",
                    "company": {"name": "Initech", "employee_count": 20},
                    "address": {"country": "US"}},
         "messageId": "j-identify", "timestamp": at},
        dated(SPEC_ACCOUNT_CREATED, "j-account", at),
    ]
