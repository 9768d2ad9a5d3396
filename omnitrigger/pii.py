"""Personal data at the edge: email and phone are hashed or masked before anything keeps them.

Every record passes through here right after its contract check, so no
stage, state store, output file or log line downstream ever holds a raw
email address or phone number:

* `ids.email` and `ids.phone` become HMAC-SHA256 digests (hex, 128 bits
  kept) under a secret key from the environment. The same person's email
  spelled " Ann@Example.COM" and "ann@example.com" hashes the same, so it
  still links.
* Anywhere else in a valid event (unknown fields, nested objects, lists,
  unknown keys of `ids`), a field named like an email or a phone (`email`,
  `customer_email`, `phoneNumber`, `mobile`, `msisdn`, ...; see `pii_kind`)
  is hashed the same way, and every other string has what looks like an
  email address or an international phone number ("+" and 8 to 15 digits)
  replaced by `[redacted]`. The known ids (`device_id`, `cookie_id`,
  `auth_id`, `loyalty_id`) are left as they are: identity needs them.
* A dead letter's raw record is redacted the same way (JSON), or by the
  text patterns when it is not JSON or nests too deep to re-write; its
  Kafka key and its detail text are masked too (`redact_key`,
  `redact_detail`).

Phones become E.164 digits first: "+358 40 123 4567", "00358401234567" and
"040 123 4567" (with the default country code 358) are all 358401234567.
A value that is not a phone number after that (fewer than 8 or more than
15 digits), or an email without an "@", is replaced by `INVALID` and never
links (the identity operator reports it).

Every pattern here runs in time linear in its text (no pattern can
backtrack over a run more than a bounded number of times), so one long
line cannot stall the flow; benchmarks/bench_redact.py measures it. Clean
records pay one regex search over their bytes (`protect`'s pre-check).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

from omnitrigger.schemas.validator import depth_exceeds

KEY_VARIABLE = "OMNITRIGGER_PII_KEY"
#: The key `omnitrigger demo` uses; it says so when it starts. Never use it for real data.
DEVELOPMENT_KEY = "omnitrigger-development-key-not-for-production"
MIN_KEY_LENGTH = 16
MIN_KEY_DISTINCT = 8  # "aaaaaaaaaaaaaaaa" is 16 characters and no secret
PII_TYPES = ("email", "phone")
#: The identifier types of `ids` (docs/design.md#event-contracts): left to `protect`, never masked by pattern.
ID_TYPES = frozenset({"device_id", "cookie_id", "auth_id", "email", "phone", "loyalty_id"})
INVALID = "!invalid"
REDACTED = "[redacted]"
#: How deep a dead letter's raw JSON may nest and still be redacted as JSON (below orjson's 254 levels).
REDACT_JSON_DEPTH = 100

_NON_DIGITS = re.compile(r"\D")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# A field name (camelCase split, lower-cased) with one of these words is an email or a phone field.
_PII_KEY = re.compile(r"(?:^|[^a-z])(?:(e[-_]?mail)|(phone|telephone|cellphone|mobile|msisdn))s?"
                      r"(?:[-_]?(?:number|no|address|addr))?(?![a-z])")

# Text patterns, written once for str and bytes. Each is linear in its text:
# KEYED: after an email/phone name and ":" or "=" (quotes and escapes around them allowed), mask
#   the value: a number with separators ("040 123 4567") or one word. Every part is bounded, so a
#   start position costs a constant. ASCII letters in either case, spelled out, so that the
#   lower-cased `_WORDS` pre-check finds every match.
# EMAIL: an email may start only where a run of address characters starts (the look-behind), so a
#   long run without "@" is scanned once, not once from each of its characters (the old pattern's
#   quadratic backtracking: 7 s for 40 KB, minutes for 262 KB).
# PHONE: "+" (not after a letter, digit or "+": not "1e+12345678") then 8 to 15 digits, at most
#   3 separators between digits. The literal "+" first lets the regex engine skip to it.
# WORDS: a lower-cased text without these has nothing for KEYED to mask.
_KEYED_TEXT = ("((?:[eE][-_]?[mM][aA][iI][lL]|[pP][hH][oO][nN][eE]|[tT][eE][lL][eE][pP][hH][oO][nN][eE]"
               "|[mM][oO][bB][iI][lL][eE]|[mM][sS][iI][sS][dD][nN])[sS]?"
               "(?:[-_]?(?:[nN][uU][mM][bB][eE][rR]|[nN][oO]|[aA][dD][dD][rR](?:[eE][sS][sS])?))?"
               r"""["'\\\s]{0,8}[:=]["'\\\s]{0,8})(\+?\(?\d[\d\s().-]{0,38}\d|[^\s"'\\,;{}\[\]()<>]{1,254})""")
_EMAIL_TEXT = r"""(?<![^\s"'<>@,;:])[^\s"'<>@,;:]+@[^\s"'<>@,;:]+\.[A-Za-z]{2,}"""
_PHONE_TEXT = r"\+(?<![\w+]\+)[\s().-]{0,3}\d(?:[\s().-]{0,3}\d){7,14}(?!\d)"
_WORDS_TEXT = "mail|phone|mobile|msisdn"


class _TextPatterns(NamedTuple):
    keyed: re.Pattern
    email: re.Pattern
    phone: re.Pattern
    words: re.Pattern
    keyed_replacement: Any
    redacted: Any
    at: Any
    plus: Any


def _patterns(kind: type) -> _TextPatterns:
    def compile_(source: str) -> re.Pattern:
        return re.compile(source.encode() if kind is bytes else source)

    def text(value: str) -> Any:
        return value.encode() if kind is bytes else value

    return _TextPatterns(compile_(_KEYED_TEXT), compile_(_EMAIL_TEXT), compile_(_PHONE_TEXT), compile_(_WORDS_TEXT),
                         text("\\1" + REDACTED), text(REDACTED), text("@"), text("+"))


_STR = _patterns(str)
_BYTES = _patterns(bytes)
_AT, _PLUS, _BACKSLASH = ord("@"), ord("+"), ord("\\")


def suspect_raw(data: bytes) -> bool:
    """Whether a record's bytes may hold anything `scrub` or `redact_raw` would change; False for most records.

    "@", "+", a backslash (JSON can spell "@" or a field name with \\u escapes) or an email/phone
    word in any case. Plain byte searches: half what one regex search costs on the real-data mix.
    """
    if _AT in data or _PLUS in data or _BACKSLASH in data:  # an int: a memchr, where a bytes needle is slower
        return True
    low = data.lower()
    # Each word's tail: a shorter needle is a faster search, and a line with the word has its tail too.
    return low.find(b"ail") >= 0 or low.find(b"hone") >= 0 or low.find(b"obile") >= 0 or low.find(b"sisdn") >= 0


def _suspect(text: str) -> bool:
    """Whether `redact_text` might change `text` (a str): a cheap test that spares clean strings the patterns."""
    if "@" in text or "+" in text:
        return True
    if len(text) < 4:
        return False
    low = text.lower()
    return "mail" in low or "phone" in low or "mobile" in low or "msisdn" in low


@lru_cache(maxsize=4096)
def _key_facts(key: str) -> tuple[str | None, bool]:
    """(`pii_kind(key)`, whether `redact_text` would change the key itself), cached: field names repeat."""
    return pii_kind(key), ("@" in key or "+" in key or ":" in key or "=" in key) and redact_text(key) != key


# Dead letters only: a whole value shaped like a phone in any format ("040 123 4567", "+44 20 7946 0958",
# "(040) 1234567"), starting with "+" or "0" so that epoch times and plain numbers are not taken for one;
# alone (a key, a JSON string) or quoted in text (a detail, a broken record). Bounded, so linear.
_PHONE_VALUE = re.compile(r"\(?[+0][\d\s().-]{7,39}")
_QUOTED_PHONE_TEXT = r"""(['"])(\(?[+0][\d\s().-]{7,39})(\\?)\1"""
_QUOTED_PHONE = re.compile(_QUOTED_PHONE_TEXT)
_QUOTED_PHONE_BYTES = re.compile(_QUOTED_PHONE_TEXT.encode())


class PiiKeyError(Exception):
    """The hashing key is missing, too short or too plain; the message is one line for the user."""


def key_from_environment() -> bytes:
    """The hashing key from OMNITRIGGER_PII_KEY: at least 16 characters, at least 8 of them different."""
    key = os.environ.get(KEY_VARIABLE, "")
    if not key:
        raise PiiKeyError(f"{KEY_VARIABLE} is not set: it is the secret that email and phone are hashed with "
                          f"(at least {MIN_KEY_LENGTH} characters; keep it stable, or identities stop matching)")
    if len(key) < MIN_KEY_LENGTH:
        raise PiiKeyError(f"{KEY_VARIABLE} is {len(key)} characters; use at least {MIN_KEY_LENGTH}")
    distinct = len(set(key))
    if distinct < MIN_KEY_DISTINCT:
        raise PiiKeyError(f"{KEY_VARIABLE} has only {distinct} different characters, which is guessable; use at least "
                          f"{MIN_KEY_DISTINCT}, for example a random key from `openssl rand -hex 24`")
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


@lru_cache(maxsize=4096)
def pii_kind(name: str) -> str | None:
    """"email" or "phone" when a field called `name` holds one, by the words in its name; else None.

    `email`, `customer_email`, `emailAddress`, `e-mail` are emails; `phone`, `phone_number`,
    `mobilePhone`, `telephone`, `msisdn`, `mobile` are phones; `smartphone_model` and `iphone` are not.
    """
    match = _PII_KEY.search(_CAMEL.sub("_", name).lower())
    if match is None:
        return None
    return "email" if match.group(1) else "phone"


def redact_text(text: Any) -> Any:
    """`text` (str or bytes) with emails, international phones and values after email/phone names masked.

    Linear in the length of `text` whatever it holds; used where a value is free text or a record
    is not JSON that can be walked. Each pattern runs only if its trigger (a word, "@", "+") is there.
    """
    patterns = _BYTES if isinstance(text, bytes) else _STR
    if patterns.words.search(text.lower()) is not None:
        text = patterns.keyed.sub(patterns.keyed_replacement, text)
    if patterns.at in text:
        text = patterns.email.sub(patterns.redacted, text)
    if patterns.plus in text:
        text = patterns.phone.sub(patterns.redacted, text)
    return text


def is_phone_value(value: str) -> bool:
    """Whether all of `value` is a phone number in some format (8 to 15 digits, starting "+" or "0")."""
    return (_PHONE_VALUE.fullmatch(value.strip()) is not None
            and 8 <= sum(ch.isdigit() for ch in value) <= 15)


def _masked_quoted(match: re.Match) -> Any:
    quote, number, escape = match.groups()
    if isinstance(number, str):
        digits = sum(ch.isdigit() for ch in number)
        redacted: Any = REDACTED
    else:
        digits = sum(48 <= byte <= 57 for byte in number)
        redacted = REDACTED.encode()
    return quote + redacted + escape + quote if 8 <= digits <= 15 else match.group(0)


def redact_record_text(text: Any) -> Any:
    """`redact_text`, and also quoted values shaped like a phone in any format: for dead letters' text.

    A dead letter's detail echoes the rejected value and its raw record may be any bytes: a
    phone number put in the wrong field is masked there too, at the price of a zero-padded id.
    """
    quoted = _QUOTED_PHONE_BYTES if isinstance(text, bytes) else _QUOTED_PHONE
    text = quoted.sub(_masked_quoted, text)
    return redact_text(text)


def redact_detail(detail: str) -> str:
    """A dead letter's detail with echoed values masked: emails, phones, and quoted values shaped like a phone."""
    return redact_record_text(detail)


def redact_key(key: Any) -> str:
    """A Kafka key as text with what looks like an email or a phone masked: a key is often a customer's phone.

    A key that is all phone number ("040 123 4567") is masked whole; a key that is not a string
    (a hand-made envelope) is written as its JSON text first.
    """
    if not isinstance(key, str):
        try:
            key = orjson.dumps(key).decode()
        except orjson.JSONEncodeError:
            return REDACTED
    if is_phone_value(key):
        return REDACTED
    return redact_record_text(key)


class Pseudonymizer:
    """Hashes email and phone in an event's `ids`, and redacts them from everywhere else in a record."""

    def __init__(self, key: bytes, country_code: str = "358") -> None:
        self._key = key
        self.country_code = country_code

    def hash(self, kind: str, normalised: str) -> str:
        return hmac.new(self._key, f"{kind}:{normalised}".encode(), hashlib.sha256).hexdigest()[:32]

    def protect_value(self, kind: str, value: Any) -> Any:
        """The keyed hash of a normalised email or phone; a blank value (empty, whitespace, null) stays as it
        is (there is nothing personal in it, and identity ignores it as blocked), anything else unusable INVALID."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return value
        if not isinstance(value, str):
            return INVALID
        normalised = normalise_email(value) if kind == "email" else normalise_phone(value, self.country_code)
        return self.hash(kind, normalised) if normalised is not None else INVALID

    def protect(self, body: dict[str, Any], raw: bytes | None = None) -> None:
        """Hash `ids.email` and `ids.phone` in place, then `scrub` the rest (the contract check has passed).

        `raw`, the bytes `body` was decoded from, lets a clean record skip the walk: one search
        for "@", "+", a "\\u" escape or an email/phone word, which every record the walk would
        change contains.
        """
        ids = body.get("ids")
        if type(ids) is dict:
            for kind in PII_TYPES:
                if kind in ids:
                    ids[kind] = self.protect_value(kind, ids[kind])
        if raw is None or suspect_raw(raw):
            self.scrub(body)

    def scrub(self, body: dict[str, Any]) -> None:
        """Redact email and phone everywhere in a valid event but its known ids, in place.

        A field named like an email or a phone (`pii_kind`), and whatever it holds, is hashed as
        `ids` are (or `INVALID`); any other string, and any key, has email and international phone
        shapes masked. Iterative: the contract check bounds the depth, but this does not rely on it.
        """
        ids = body.get("ids")
        stack: list[tuple[Any, str | None]] = [(body, None)]
        while stack:
            node, kind = stack.pop()
            if type(node) is dict:
                rename = False
                for key, item in node.items():
                    if node is ids and key in ID_TYPES:
                        continue
                    key_kind, key_changes = _key_facts(key)
                    new = self._scrub_item(item, key_kind or kind, stack)
                    if new is not item:
                        node[key] = new
                    rename = rename or key_changes
                if rename:
                    _redact_keys(node)
            else:
                for index, item in enumerate(node):
                    new = self._scrub_item(item, kind, stack)
                    if new is not item:
                        node[index] = new

    def _scrub_item(self, item: Any, kind: str | None, stack: list[tuple[Any, str | None]]) -> Any:
        """One value of `scrub`: containers go on the stack, strings (and numbers under a PII name) are redacted."""
        kind_of = type(item)
        if kind_of is str:
            if kind is not None:
                return self.protect_value(kind, item)
            return redact_text(item) if _suspect(item) else item
        if kind_of is dict or kind_of is list:
            stack.append((item, kind))
        elif kind is not None and kind_of is int:
            return self.protect_value(kind, str(item))
        return item

    def redact_raw(self, raw: str | bytes) -> str | bytes:
        """A dead letter's raw record with every email and phone hashed (JSON) or masked (anything else).

        Survives any input: JSON that orjson cannot read (broken, or nested past its 1,024 levels)
        or that nests past `REDACT_JSON_DEPTH` is masked as text (`redact_record_text`). On top of
        `scrub`'s rules, a string that is all phone number in any format is masked: a broken record
        may have one in any field. A record with nothing to redact comes back as it was, byte for byte.
        """
        data = raw.encode() if isinstance(raw, str) else raw
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            redacted = redact_record_text(data)
        else:
            if depth_exceeds(document, REDACT_JSON_DEPTH):
                redacted = redact_record_text(data)
            else:
                clean = self._redact_value(document, None, REDACT_JSON_DEPTH)
                redacted = data if clean == document else orjson.dumps(clean)
        if redacted == data:
            return raw
        return redacted.decode("utf-8", "replace") if isinstance(raw, str) else redacted

    def _redact_value(self, value: Any, kind: str | None, budget: int) -> Any:
        """`value` with email and phone hashed or masked; `budget` is how many more levels may nest."""
        kind_of = type(value)
        if kind_of is dict:
            out: dict[str, Any] = {}
            for key, item in value.items():
                name = redact_text(key) if _suspect(key) else key
                while name in out:
                    name += "~"
                out[name] = self._redact_value(item, pii_kind(key) or kind, budget - 1)
            return out
        if kind_of is list:
            return [self._redact_value(item, kind, budget - 1) for item in value]
        if kind is not None and (kind_of is str or kind_of is int):
            return self.protect_value(kind, value if kind_of is str else str(value))
        if kind_of is not str:
            return value
        if value[:1] in ("{", "["):  # an envelope's payload is JSON inside a string
            try:
                inner = orjson.loads(value)
            except orjson.JSONDecodeError:
                return redact_record_text(value)
            if depth_exceeds(inner, budget - 1):
                return redact_record_text(value)
            clean = self._redact_value(inner, None, budget - 1)
            return value if clean == inner else orjson.dumps(clean).decode()
        if is_phone_value(value):
            return REDACTED
        return redact_text(value) if _suspect(value) else value


def _redact_keys(node: dict[str, Any]) -> None:
    """Rename, in place and in order, the keys of `node` that hold an email or a phone shape."""
    items = list(node.items())
    node.clear()
    for key, item in items:
        name = redact_text(key) if _key_facts(key)[1] else key
        while name in node:
            name += "~"
        node[name] = item
