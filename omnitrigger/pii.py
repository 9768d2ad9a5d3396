"""Personal data at the edge: email and phone are normalised and keyed-hashed before anything keeps them.

Every record passes through here right after its contract check, so no
stage, state store, output file or log line downstream ever holds a raw
email address or phone number: `ids.email` and `ids.phone` become
HMAC-SHA256 digests (hex, 128 bits kept) under a secret key from the
environment. The same person's email spelled " Ann@Example.COM" and
"ann@example.com" hashes the same, so it still links. A dead letter's raw
record is redacted the same way before it is written.

Phones become E.164 digits first: "+358 40 123 4567", "00358401234567" and
"040 123 4567" (with the default country code 358) are all 358401234567.
A value that is not a phone number after that (fewer than 8 or more than
15 digits), or an email without an "@", is replaced by `INVALID` and never
links (the identity operator reports it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

import orjson

KEY_VARIABLE = "OMNITRIGGER_PII_KEY"
#: The key `omnitrigger demo` uses; it says so when it starts. Never use it for real data.
DEVELOPMENT_KEY = "omnitrigger-development-key-not-for-production"
MIN_KEY_LENGTH = 16
PII_TYPES = ("email", "phone")
INVALID = "!invalid"

_NON_DIGITS = re.compile(r"\D")
# For raw lines that are not JSON: the value after an "email" or "phone" key, and anything shaped like an email.
_KEYED_VALUE = re.compile(rb'("(?:email|phone)"\s*:\s*)"(?:[^"\\]|\\.)*"')
_EMAIL_SHAPE = re.compile(rb"[^\s\"'<>@,;:]+@[^\s\"'<>@,;:]+\.[A-Za-z]{2,}")


class PiiKeyError(Exception):
    """The hashing key is missing or too short; the message is one line for the user."""


def key_from_environment() -> bytes:
    key = os.environ.get(KEY_VARIABLE, "")
    if not key:
        raise PiiKeyError(f"{KEY_VARIABLE} is not set: it is the secret that email and phone are hashed with "
                          f"(at least {MIN_KEY_LENGTH} characters; keep it stable, or identities stop matching)")
    if len(key) < MIN_KEY_LENGTH:
        raise PiiKeyError(f"{KEY_VARIABLE} is {len(key)} characters; use at least {MIN_KEY_LENGTH}")
    return key.encode()


def normalise_email(value: str) -> str | None:
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    return email if at and local and "." in domain and " " not in email else None


def normalise_phone(value: str, country_code: str) -> str | None:
    """E.164 digits without the "+", or None when the value cannot be a phone number."""
    text = value.strip()
    digits = _NON_DIGITS.sub("", text)
    if text.startswith("+"):
        number = digits
    elif digits.startswith("00"):
        number = digits[2:]
    elif digits.startswith("0"):
        number = country_code + digits[1:]
    elif digits.startswith(country_code) and len(digits) > 10:
        number = digits
    else:
        number = country_code + digits
    return number if 8 <= len(number) <= 15 and not number.startswith("0") else None


class Pseudonymizer:
    """Replaces email and phone in an event's `ids` by keyed hashes of their normalised form."""

    def __init__(self, key: bytes, country_code: str = "358") -> None:
        self._key = key
        self.country_code = country_code

    def hash(self, kind: str, normalised: str) -> str:
        return hmac.new(self._key, f"{kind}:{normalised}".encode(), hashlib.sha256).hexdigest()[:32]

    def protect_value(self, kind: str, value: Any) -> str:
        if not isinstance(value, str):
            return INVALID
        normalised = normalise_email(value) if kind == "email" else normalise_phone(value, self.country_code)
        return self.hash(kind, normalised) if normalised is not None else INVALID

    def protect(self, body: dict[str, Any]) -> None:
        """Hash `ids.email` and `ids.phone` in place (the contract check has passed)."""
        ids = body.get("ids")
        if type(ids) is dict:
            for kind in PII_TYPES:
                if kind in ids:
                    ids[kind] = self.protect_value(kind, ids[kind])

    def redact_raw(self, raw: str | bytes) -> str | bytes:
        """A dead letter's raw record with every email and phone hashed (JSON) or masked (anything else)."""
        data = raw.encode() if isinstance(raw, str) else raw
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            redacted = _KEYED_VALUE.sub(rb'\1"[redacted]"', data)
            redacted = _EMAIL_SHAPE.sub(b"[redacted]", redacted)
        else:
            redacted = orjson.dumps(self._redact_value(document))
        return redacted.decode("utf-8", "replace") if isinstance(raw, str) else redacted

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: (self.protect_value(key, item) if key in PII_TYPES and not isinstance(item, (dict, list))
                          else self._redact_value(item)) for key, item in value.items()}
        if isinstance(value, list):
            return [self._redact_value(item) for item in value]
        if isinstance(value, str) and value[:1] in "{[":
            try:  # an envelope's payload is JSON inside a string
                inner = orjson.loads(value)
            except orjson.JSONDecodeError:
                return _EMAIL_SHAPE.sub(b"[redacted]", value.encode()).decode()
            return orjson.dumps(self._redact_value(inner)).decode()
        if isinstance(value, str) and "@" in value:
            return _EMAIL_SHAPE.sub(b"[redacted]", value.encode()).decode()
        return value
