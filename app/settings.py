"""Every CareCall setting, declared once: its type, default, range and a line of help.

Values come from the environment (``CARECALL_NAME``, a few also under the vendor's own
name), are parsed by type and validated when the app is created; a wrong value stops
start-up with a message naming the variable. Modules read ``app.config`` and keep no
defaults of their own.
"""

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import click
from flask import current_app
from flask.cli import with_appcontext

PREFIX = "CARECALL_"
MASK = "********"
# Defaults may name the instance folder; it is known only when the app is built.
INSTANCE = "{instance}"


class SettingsError(click.ClickException):
    """A setting has a value it cannot take; the message names the variable."""


class _Bad(ValueError):
    """A value does not fit a kind; the message says what was expected."""


# --- Kinds: how a value is written in the environment, and what it may be ---------------


@dataclass(frozen=True)
class Text:
    """A string, optionally with a minimum length or a pattern."""

    min_length: int = 0
    pattern: str | None = None
    what: str = "text"

    def __post_init__(self):
        if self.what == "text" and self.min_length:
            object.__setattr__(self, "what", f"text of at least {self.min_length} characters")

    def parse(self, raw):
        """Return the string as written."""
        return raw

    def check(self, value):
        """Return value if it is a long enough string of the right shape."""
        if not isinstance(value, str):
            raise _Bad(f"expected {self.what}")
        if len(value) < self.min_length:
            raise _Bad(f"must be at least {self.min_length} characters")
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise _Bad(f"expected {self.what}")
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of words."""

    choices: tuple

    @property
    def what(self):
        """Describe the kind for people."""
        return "one of " + ", ".join(self.choices)

    def parse(self, raw):
        """Return the word, lower-cased."""
        return raw.strip().lower()

    def check(self, value):
        """Return value if it is one of the choices."""
        if value not in self.choices:
            raise _Bad(f"expected {self.what}")
        return value


@dataclass(frozen=True)
class Number:
    """An integer or a real number within a range."""

    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False

    @property
    def what(self):
        """Describe the kind for people."""
        kind = "a whole number" if self.integer else "a number"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} from {_fmt(self.minimum)} to {_fmt(self.maximum)}"
        if self.minimum is not None:
            return f"{kind} ≥ {_fmt(self.minimum)}"
        return kind

    def parse(self, raw):
        """Parse a number written in decimal."""
        try:
            return int(raw.strip()) if self.integer else float(raw.strip())
        except ValueError:
            raise _Bad(f"expected {self.what}") from None

    def check(self, value):
        """Return value if it is a number of the right kind within range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(f"expected {self.what}")
        if self.integer and not float(value).is_integer():
            raise _Bad(f"expected {self.what}")
        if not math.isfinite(value):
            raise _Bad(f"expected {self.what}")
        if self.minimum is not None and value < self.minimum:
            raise _Bad(f"expected {self.what}")
        if self.maximum is not None and value > self.maximum:
            raise _Bad(f"expected {self.what}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Flag:
    """A yes/no switch."""

    what: str = "true or false (also 1/0, yes/no, on/off)"
    words = {"true": True, "1": True, "yes": True, "on": True}
    words |= {"false": False, "0": False, "no": False, "off": False}

    def parse(self, raw):
        """Parse true/false, 1/0, yes/no or on/off in any case."""
        try:
            return self.words[raw.strip().lower()]
        except KeyError:
            raise _Bad(f"expected {self.what}") from None

    def show(self, value):
        """Write the switch the way it is entered."""
        return "true" if value else "false"

    def check(self, value):
        """Return value if it is a boolean."""
        if not isinstance(value, bool):
            raise _Bad(f"expected {self.what}")
        return value


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9}
_SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class Size:
    """A number of bytes, written plainly or with a unit: 50MB, 1.5 GiB."""

    minimum: int = 1
    maximum: int = 2**40
    what: str = "a size in bytes, e.g. 50MB or 1GiB"

    def parse(self, raw):
        """Parse bytes with an optional unit (kB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024)."""
        match = _SIZE_RE.fullmatch(raw.strip())
        if not match:
            raise _Bad(f"expected {self.what}")
        number, unit = match.groups()
        return int(float(number) * _SIZE_UNITS[(unit or "b").lower()])

    def show(self, value):
        """Write bytes the way they are entered: 50MB, 1MiB, or plain bytes."""
        for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= factor and value % factor == 0:
                return f"{value // factor}{unit}"
        for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
            if value >= factor and value % factor == 0:
                return f"{value // factor}{unit}"
        return str(value)

    def check(self, value):
        """Return value if it is a whole number of bytes within range."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"expected {self.what}")
        if not self.minimum <= value <= self.maximum:
            raise _Bad(f"must be between {self.minimum} and {self.maximum} bytes")
        return value


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Duration:
    """A length of time in seconds, written plainly or with a unit: 90, 15m, 8h, 1d."""

    minimum: float = 0
    maximum: float = 366 * 86400

    @property
    def what(self):
        """Describe the kind for people."""
        return f"seconds, or a time like 15m or 8h, from {_fmt(self.minimum)} s"

    def parse(self, raw):
        """Parse seconds with an optional unit s, m, h or d."""
        match = _DURATION_RE.fullmatch(raw.strip())
        if not match:
            raise _Bad(f"expected {self.what}")
        return float(match[1]) * _DURATION_UNITS[match[2].lower()]

    def show(self, value):
        """Write seconds the way they are entered: 8h, 15m, 90s or 0.5s."""
        for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
            if value >= factor and value % factor == 0:
                return f"{int(value // factor)}{unit}"
        return f"{_fmt(value)}s"

    def check(self, value):
        """Return value in seconds if it is within range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad(f"expected {self.what}")
        if not (math.isfinite(value) and self.minimum <= value <= self.maximum):
            raise _Bad(f"must be from {_fmt(self.minimum)} to {_fmt(self.maximum)} seconds")
        return float(value)


_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
_IPV4_RE = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})")


def _is_host(name):
    """Return whether name is a DNS host name or a dotted IPv4 address."""
    if ip := _IPV4_RE.fullmatch(name):
        return all(int(part) <= 255 for part in ip.groups())
    # A bare number such as "1" is no host: it is how a mistyped address slips through.
    return bool(_HOST_RE.fullmatch(name)) and not name.replace(".", "").isdigit()


@dataclass(frozen=True)
class Hosts:
    """A list of host names: JSON or comma-separated."""

    what: str = "host names, comma-separated or a JSON list (no scheme or path)"

    def parse(self, raw):
        """Parse a JSON list or a comma-separated list of host names."""
        return _parse_list(raw)

    def check(self, value):
        """Return the names as a lower-cased tuple if each is a host name."""
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise _Bad(f"expected {self.what}")
        hosts = []
        for item in value:
            if not isinstance(item, str) or not _is_host(item.strip().lower()):
                raise _Bad(f"{item!r} is not a host name; expected {self.what}")
            hosts.append(item.strip().lower())
        if not hosts:
            raise _Bad("needs at least one host name")
        return tuple(hosts)


@dataclass(frozen=True)
class Url:
    """An absolute http(s) URL."""

    what: str = "an absolute http:// or https:// URL"

    def parse(self, raw):
        """Return the URL as written, without a trailing slash."""
        return raw.strip().rstrip("/")

    def check(self, value):
        """Return value if it is an http(s) URL with a valid host."""
        if not isinstance(value, str):
            raise _Bad(f"expected {self.what}")
        try:
            parts = urlsplit(value)
            host = parts.hostname
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise _Bad(f"expected {self.what}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise _Bad(f"expected {self.what}")
        if not (_is_host(host) or host in ("localhost", "::1")):
            raise _Bad(f"{host!r} is not a host name; expected {self.what}")
        return value.rstrip("/")


@dataclass(frozen=True)
class HourRange:
    """Hours in one day: 9-17, or [9, 17]; quiet hours may cross midnight (21-8) or be off."""

    # wraps: a range may run past midnight, start after end; off: "off" (or none) unsets it.
    wraps: bool = False
    off: bool = False

    @property
    def what(self):
        """Describe the kind for people."""
        if self.wraps:
            off = ", or off" if self.off else ""
            return f"hours like 21-8 (may cross midnight, 0 to 24){off}"
        return "hours like 9-17 (start before end, 0 to 24)"

    def parse(self, raw):
        """Parse START-END or a JSON pair (or off, when it may be off)."""
        text = raw.strip()
        if self.off and text.lower() in ("off", "none"):
            return ""
        if text.startswith("["):
            return _json(text, self.what)
        parts = re.fullmatch(r"(\d{1,2})(?::00)?\s*[-,]\s*(\d{1,2})(?::00)?", text)
        if not parts:
            raise _Bad(f"expected {self.what}")
        return [int(parts[1]), int(parts[2])]

    def show(self, value):
        """Write hours the way they are entered: 9-17."""
        return f"{value[0]}-{value[1]}"

    def check(self, value):
        """Return (start, end) if 0 <= start < end <= 24 (or start != end when it wraps)."""
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise _Bad(f"expected {self.what}")
        start, end = value
        if not all(isinstance(h, int) and not isinstance(h, bool) for h in value):
            raise _Bad(f"expected {self.what}")
        if self.wraps:
            if not (0 <= start < 24 and 0 <= end <= 24 and start != end % 24):
                raise _Bad(f"expected {self.what}")
        elif not 0 <= start < end <= 24:
            raise _Bad(f"expected {self.what}")
        return (start, end)


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Weekdays:
    """Days of the week: mon-fri, sat,sun, or numbers 0 (Monday) to 6."""

    what: str = "days like mon-fri or mon,wed,fri (or 0-6, Monday is 0)"

    def parse(self, raw):
        """Parse day names, ranges of them, or numbers."""
        text = raw.strip().lower()
        if text.startswith("["):
            return _json(text, self.what)
        days = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            ends = [self._day(end.strip()) for end in part.split("-")]
            if len(ends) == 1:
                days.append(ends[0])
            elif len(ends) == 2 and ends[0] <= ends[1]:
                days.extend(range(ends[0], ends[1] + 1))
            else:
                raise _Bad(f"expected {self.what}")
        return days

    def _day(self, word):
        """Return the day number of a name or digit."""
        if word in DAY_NAMES:
            return DAY_NAMES.index(word)
        if word.isdigit() and int(word) < 7:
            return int(word)
        raise _Bad(f"{word!r} is not a day; expected {self.what}")

    def show(self, value):
        """Write days the way they are entered: mon-fri, or sat,sun."""
        runs = []
        for day in sorted(value):
            if runs and day == runs[-1][-1] + 1:
                runs[-1].append(day)
            else:
                runs.append([day])
        parts = []
        for run in runs:
            if len(run) >= 3:
                parts.append(f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}")
            else:
                parts.extend(DAY_NAMES[d] for d in run)
        return ",".join(parts)

    def check(self, value):
        """Return the days as a sorted tuple of numbers."""
        if not isinstance(value, list | tuple) or not value:
            raise _Bad(f"expected {self.what}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 6 for d in value):
            raise _Bad(f"expected {self.what}")
        return tuple(sorted(set(value)))


@dataclass(frozen=True)
class TimeZone:
    """An IANA time zone name."""

    what: str = "an IANA time zone such as Europe/London"

    def parse(self, raw):
        """Return the name as written."""
        return raw.strip()

    def check(self, value):
        """Return value if the time zone database knows it."""
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise _Bad(f"unknown time zone; expected {self.what}") from None
        return value


@dataclass(frozen=True)
class Engines:
    """Speech engine per language: {"en": "whisper:whisper-tiny-en"} or en=whisper:NAME,..."""

    engines: tuple = ("whisper", "vosk")
    what: str = 'a JSON object like {"en": "whisper:whisper-tiny-en"} or en=whisper:NAME,ko=...'

    def parse(self, raw):
        """Parse a JSON object, or LANG=ENGINE:MODEL pairs separated by commas."""
        text = raw.strip()
        if text.startswith("{"):
            return _json(text, self.what)
        pairs = [p.split("=", 1) for p in filter(None, (p.strip() for p in text.split(",")))]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise _Bad(f"expected {self.what}")
        return {lang.strip(): spec.strip() for lang, spec in pairs}

    def show(self, value):
        """Write the engines the way they are entered: en=whisper:NAME,ko=vosk:NAME."""
        return ",".join(f"{language}={spec}" for language, spec in value.items())

    def check(self, value):
        """Return the mapping if every language names a known engine and a model."""
        if not isinstance(value, Mapping) or not value:
            raise _Bad(f"expected {self.what}")
        for language, spec in value.items():
            if not re.fullmatch(r"[a-z]{2,3}", str(language)):
                raise _Bad(f"{language!r} is not a language code like en")
            engine, _, model = str(spec).partition(":")
            if engine not in self.engines or not model:
                raise _Bad(
                    f"{language}: {spec!r} must be ENGINE:MODEL with ENGINE one of "
                    + ", ".join(self.engines)
                )
        return dict(value)


def _parse_list(raw):
    """Parse a JSON list or a comma-separated list of words."""
    text = raw.strip()
    if text.startswith("["):
        return _json(text, "a JSON list")
    return [part.strip() for part in text.split(",") if part.strip()]


def _json(text, what):
    """Parse JSON, explaining what was expected when it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise _Bad(f"not valid JSON; expected {what}") from None


def _fmt(number):
    """Format a bound without a needless .0."""
    return str(int(number)) if float(number).is_integer() else str(number)


PHONE = Text(pattern=r"\+[1-9]\d{6,14}", what="a phone number in E.164 form, e.g. +15551234567")
DIAL = Text(pattern=r"\d{2,15}", what="digits to dial, e.g. 911 or 112")
LANGUAGE = Text(pattern=r"[a-z]{2,3}", what="a language code like en")


# --- The table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its name, kind, default and a line of help."""

    name: str
    kind: Any
    default: Any
    help: str
    optional: bool = False
    secret: bool = False
    # Other environment names that also set it (a vendor's own), after CARECALL_NAME.
    aliases: tuple = ()
    group: str = "general"

    @property
    def env(self):
        """Return the environment variable that sets it."""
        return PREFIX + self.name

    def value(self, raw):
        """Parse an environment string, or check a value given in code."""
        if isinstance(raw, str):
            raw = self.kind.parse(raw)
        if raw is None or (self.optional and raw == ""):
            if self.optional:
                return None
            raise _Bad("must be set")
        return self.kind.check(raw)


def _s(group, name, kind, default, help, **extra):
    """Declare a setting."""
    return Setting(name, kind, default, help, group=group, **extra)


SETTINGS = (
    # Storage and workers
    _s("storage", "DATABASE", Text(1), f"{INSTANCE}/carecall.db", "SQLite database file."),
    _s(
        "storage",
        "DATA_DIR",
        Text(1),
        f"{INSTANCE}/data",
        "Folder for recordings, uploads and rendered speech.",
    ),
    _s(
        "storage",
        "OUTBOX_DIR",
        Text(1),
        f"{INSTANCE}/outbox",
        "Folder where outbound messages wait when no Twilio credentials are set.",
    ),
    _s(
        "storage",
        "DB_BUSY_TIMEOUT_SECONDS",
        # At most 4.5 s: three tries must stay inside the 15 s Twilio waits for a webhook.
        Number(0.1, 4.5),
        # A write tries 3 times: 3 × 4 s stays inside the 15 s Twilio waits for a webhook.
        4.0,
        "How long a write waits for another writer, per try (3 tries) before a 503.",
    ),
    _s(
        "storage",
        "WORKER",
        Choice(("inprocess", "none")),
        "inprocess",
        "inprocess: serve runs jobs in a thread; none: run `flask --app app worker` apart.",
    ),
    _s(
        "storage",
        "JOB_LEASE_SECONDS",
        Number(1, 86400),
        300.0,
        "How long a worker may hold a job before another may take it over.",
    ),
    _s(
        "storage",
        "JOB_MAX_ATTEMPTS",
        Number(1, 100, integer=True),
        5,
        "Tries before a job goes to the dead letter.",
    ),
    _s(
        "storage",
        "JOB_BACKOFF_SECONDS",
        Number(0, 3600),
        2.0,
        "First retry delay; it doubles with each failure (capped at 5 minutes).",
    ),
    _s(
        "storage",
        "WORKER_HEARTBEAT_SECONDS",
        Number(0.1, 3600),
        5.0,
        "How often a worker says it is alive; silent for 3 beats, its job is taken over.",
    ),
    _s(
        "storage",
        "DATA_SWEEP_SECONDS",
        Number(1, 86400),
        3600.0,
        "How often a worker sweeps DATA_DIR for files a killed process left (also at start-up).",
    ),
    _s(
        "storage",
        "JOB_POLL_SECONDS",
        Number(0.01, 60),
        0.2,
        "How often an idle worker looks for jobs queued by other processes.",
    ),
    # Speech
    _s("speech", "MODELS_DIR", Text(1), "{repo}/speech_models", "Folder of installed models."),
    _s("speech", "FLOWS_DIR", Text(1), "{repo}/ivr_flows", "Folder of call flows and categories."),
    _s(
        "speech",
        "SPEECH_ENGINES",
        Engines(),
        # Only what ./scripts/run installs, so a fresh install is ready; add ko=vosk:vosk-ko
        # after `flask --app app models install vosk-ko`.
        {"en": "whisper:whisper-tiny-en"},
        "Engine and model per language, from speech_models/models.toml.",
    ),
    _s("speech", "DEFAULT_LANGUAGE", LANGUAGE, "en", "Language when a caller has not chosen."),
    _s(
        "speech",
        "TEXT_MODEL",
        Text(
            1,
            r"[a-z0-9-]+(\+[a-z0-9-]+)*",
            "lowercase text model names (e5-small, minilm-l6) joined with +, or none",
        ),
        "e5-small+minilm-l6",
        "Sentence-embedding models (side by side) joined with the rules to classify; "
        "none: the rules alone.",
    ),
    _s(
        "speech",
        "MAX_AUDIO_SECONDS",
        Number(1, 3600, integer=True),
        600,
        "Longest recording transcribed; longer ones are refused with a clear error.",
    ),
    _s(
        "speech",
        "REVIEW_CONFIDENCE",
        Number(0, 1),
        0.6,
        "Below this transcript confidence a person listens instead of a word-by-word readback.",
    ),
    # Web
    _s(
        "web",
        "SECRET_KEY",
        Text(16, what="at least 16 random characters"),
        None,
        "Signs sessions and CSRF tokens; generated into instance/secret_key when unset.",
        optional=True,
        secret=True,
    ),
    _s(
        "web",
        "MAX_CONTENT_LENGTH",
        Size(),
        1024 * 1024,
        "Largest request body for forms and webhooks (kiosk uploads have their own limits).",
    ),
    _s(
        "web",
        "PUBLIC_BASE_URL",
        Url(),
        None,
        "The https:// address people and Twilio use, when a proxy sits in front.",
        optional=True,
    ),
    _s(
        "web",
        "TRUST_FORWARDED_HEADERS",
        Flag(),
        False,
        "Believe X-Forwarded-For/Proto/Host from a proxy you run (never on a bare server).",
    ),
    _s(
        "web",
        "COOKIE_SECURE",
        Choice(("auto", "true", "false")),
        "auto",
        "Login cookie over HTTPS only; auto: when PUBLIC_BASE_URL or the request is https.",
    ),
    # Console and accounts
    _s(
        "console",
        "LOGIN_MAX_FAILURES",
        Number(1, 100, integer=True),
        5,
        "Wrong passwords for one name from one place before that place must wait for it.",
    ),
    _s(
        "console",
        "LOGIN_MAX_FAILURES_PER_CLIENT",
        Number(1, 10000, integer=True),
        20,
        "Wrong passwords from one place, whatever the names, before that place must wait.",
    ),
    _s(
        "console",
        "LOCKOUT_BASE_SECONDS",
        Number(0, 86400),
        30.0,
        "First wait after too many wrong passwords; it doubles each time.",
    ),
    _s(
        "console",
        "LOCKOUT_MAX_SECONDS",
        Number(0, 86400),
        3600.0,
        "Longest wait after wrong passwords.",
    ),
    _s(
        "console",
        "PASSWORD_HASH_TIME_COST",
        Number(1, 20, integer=True),
        3,
        "argon2id passes.",
    ),
    _s(
        "console",
        "PASSWORD_HASH_MEMORY_KIB",
        Number(8, 4 * 1024 * 1024, integer=True),
        65536,
        "argon2id memory in KiB.",
    ),
    _s(
        "console",
        "PASSWORD_HASH_PARALLELISM",
        Number(1, 64, integer=True),
        4,
        "argon2id lanes.",
    ),
    _s(
        "console",
        "SESSION_LIFETIME",
        Duration(60, 30 * 86400),
        8 * 3600.0,
        "How long a console login lasts without activity (a working day).",
    ),
    _s(
        "console",
        "DUPLICATE_WINDOW_HOURS",
        Number(0, 24 * 365),
        24.0,
        "How far back a request's possible duplicates are looked for.",
    ),
    _s(
        "console",
        "DUPLICATE_SIMILARITY",
        Number(0, 100),
        85.0,
        "Transcript similarity (0-100) above which requests are offered for merging.",
    ),
    _s(
        "console",
        "LOW_WORD_CONFIDENCE",
        Number(0, 1),
        0.6,
        "Words heard with less confidence than this are marked on the request page.",
    ),
    _s(
        "console",
        "CONSOLE_POLL_SECONDS",
        Number(0.5, 600),
        3.0,
        "How often the queue page refreshes itself.",
    ),
    _s(
        "console",
        "CONSOLE_PAGE_SIZE",
        Number(1, 1000, integer=True),
        50,
        "Requests per queue page.",
    ),
    # Phone line
    _s(
        "phone",
        "TWILIO_ACCOUNT_SID",
        Text(pattern=r"AC[0-9a-fA-F]{32}", what="a Twilio account SID (AC + 32 hex digits)"),
        None,
        "Twilio account; also read from TWILIO_ACCOUNT_SID.",
        optional=True,
        aliases=("TWILIO_ACCOUNT_SID",),
    ),
    _s(
        "phone",
        "TWILIO_AUTH_TOKEN",
        Text(8),
        None,
        "Checks every webhook's signature; without it every webhook is refused."
        " Also read from TWILIO_AUTH_TOKEN.",
        optional=True,
        secret=True,
        aliases=("TWILIO_AUTH_TOKEN",),
    ),
    _s(
        "phone",
        "TWILIO_RECORDING_HOSTS",
        Hosts(),
        ("api.twilio.com",),
        "Hosts recordings may be fetched from.",
    ),
    _s(
        "phone",
        "TWILIO_API_BASE_URL",
        Url(),
        "https://api.twilio.com",
        "Twilio's REST API (tests point it at a local fake).",
    ),
    _s(
        "phone",
        "TWILIO_DOWNLOAD_TIMEOUT",
        Number(0.1, 60),
        3.0,
        "Whole time one recording download may take inside a webhook, in seconds.",
    ),
    _s(
        "phone",
        "TWILIO_FETCH_ATTEMPTS",
        Number(1, 50, integer=True),
        6,
        "Background tries to fetch a recording before a person is told.",
    ),
    _s(
        "phone",
        "TWILIO_MAX_RECORDING_BYTES",
        Size(),
        50 * 1024 * 1024,
        "Largest recording downloaded from Twilio.",
    ),
    _s("phone", "EMERGENCY_NUMBER", DIAL, "911", "The emergency number callers are told to dial."),
    _s(
        "phone",
        "COORDINATOR_NUMBER",
        PHONE,
        None,
        "Where 0 connects a caller during coordinator hours.",
        optional=True,
    ),
    _s(
        "phone",
        "DUTY_COORDINATOR_NUMBER",
        PHONE,
        None,
        "Offered after an emergency, at any hour.",
        optional=True,
    ),
    _s(
        "phone",
        "COORDINATOR_HOURS",
        HourRange(),
        (9, 17),
        "Hours when 0 dials a coordinator, e.g. 9-17.",
    ),
    _s(
        "phone",
        "COORDINATOR_DAYS",
        Weekdays(),
        (0, 1, 2, 3, 4),
        "Days when 0 dials a coordinator, e.g. mon-fri.",
    ),
    _s(
        "phone",
        "COORDINATOR_TIMEZONE",
        TimeZone(),
        "UTC",
        "Time zone of coordinator hours.",
    ),
    _s(
        "phone",
        "RECORD_MAX_SECONDS",
        Number(10, 3600, integer=True),
        120,
        "Longest message a caller can leave.",
    ),
    # Offers to volunteers
    _s(
        "offers",
        "TWILIO_FROM_NUMBER",
        PHONE,
        None,
        "The number offers and calls to seniors come from; without it they wait in the outbox."
        " Also read from TWILIO_FROM_NUMBER.",
        optional=True,
        aliases=("TWILIO_FROM_NUMBER",),
    ),
    _s(
        "offers",
        "TWILIO_API_TIMEOUT",
        Number(0.5, 120),
        15.0,
        "Longest wait for Twilio's REST API to take one SMS or call, in seconds.",
    ),
    _s(
        "offers",
        "OFFER_TIMEOUT",
        Duration(1, 7 * 86400),
        30 * 60.0,
        "An offer nobody answers in this time expires: the next volunteer is asked.",
    ),
    _s(
        "offers",
        "CHECKIN_GRACE",
        Duration(1, 7 * 86400),
        30 * 60.0,
        "No check-in this long after the agreed start: a no-show, and the next volunteer is asked.",
    ),
    _s(
        "offers",
        "CHECKIN_EARLY",
        Duration(0, 2 * 86400),
        2 * 3600.0,
        "A volunteer's check-in this long before the agreed start is refused as too early"
        " (another day's visit, perhaps); a coordinator may enter any time by hand.",
    ),
    _s(
        "offers",
        "VISIT_MAX",
        Duration(15 * 60, 7 * 86400),
        12 * 3600.0,
        "A check-out making a visit longer than this is refused: entered by hand it is a slip;"
        " sent by a volunteer, a coordinator is asked to enter the time they left.",
    ),
    _s(
        "offers",
        "RECURRING_HORIZON",
        Duration(2 * 3600, 60 * 86400),
        2 * 86400.0,
        "How far ahead each occurrence of a standing arrangement becomes a request and is"
        " offered (checked hourly, so at least 2h).",
    ),
    _s(
        "offers",
        "RATING_CALL_DELAY",
        Duration(0, 7 * 86400),
        60.0,
        "How long after check-out the senior is called to confirm the visit and rate it.",
    ),
    _s(
        "offers",
        "RATING_QUIET_HOURS",
        HourRange(wraps=True, off=True),
        None,
        "No rating calls in these hours (COORDINATOR_TIMEZONE), e.g. 20-9; one due then is"
        " placed when they end. Unset or off: calls at any hour.",
        optional=True,
    ),
    _s(
        "offers",
        "OUTBOX_MAX_ATTEMPTS",
        Number(1, 50, integer=True),
        6,
        "Tries to hand one SMS or call to Twilio before a coordinator is told.",
    ),
    _s(
        "offers",
        "VOLUNTEER_LINK_LIFETIME",
        # A job may be offered days before the visit; its link must still open on the day.
        Duration(3600, 366 * 86400),
        14 * 86400.0,
        "How long the link in an offer SMS opens its page (accept, decline, check in and out).",
    ),
    # Kiosk
    _s(
        "kiosk",
        "KIOSK_MAX_AUDIO_BYTES",
        Size(),
        50_000_000,
        "Largest kiosk audio upload, enforced while it streams.",
    ),
    _s(
        "kiosk",
        "KIOSK_MAX_VIDEO_BYTES",
        Size(),
        200_000_000,
        "Largest kiosk video upload, enforced while it streams.",
    ),
    _s(
        "kiosk",
        "KIOSK_LANGUAGE",
        LANGUAGE,
        None,
        "Language of the kiosk page (app/kiosk/languages/<code>.toml); unset: DEFAULT_LANGUAGE.",
        optional=True,
    ),
    _s(
        "kiosk",
        "KIOSK_PHONE_REGION",
        Text(pattern=r"[A-Z]{2}", what="a two-letter country code like US"),
        "US",
        "Country of a call-back number typed on a kiosk's keypad without + and country code.",
    ),
    _s(
        "kiosk",
        "KIOSK_RESET_SECONDS",
        Number(3, 3600),
        30.0,
        'After "thank you", how long the page waits before greeting the next person.',
    ),
    _s(
        "kiosk",
        "KIOSK_READBACK_SECONDS",
        Number(10, 86400),
        300.0,
        "A readback nobody answers is left for a coordinator after this long.",
    ),
    _s(
        "kiosk",
        "KIOSK_SILENCE_SECONDS",
        Number(0.5, 60),
        4.0,
        "Silence after speech that ends a recording (older speakers pause mid-sentence).",
    ),
    _s(
        "kiosk",
        "KIOSK_QUIET_SECONDS",
        Number(1, 600),
        45.0,
        "Nothing heard for this long: the person has walked away or the microphone is dead.",
    ),
    _s(
        "kiosk",
        "KIOSK_MAX_RECORD_SECONDS",
        Number(5, 3600, integer=True),
        300,
        "Longest kiosk recording.",
    ),
    _s(
        "kiosk",
        "KIOSK_SILENCE_LEVEL",
        Number(0, 1),
        0.015,
        "Loudness (RMS, 0 to 1) above which the page counts sound as speech.",
    ),
    _s(
        "kiosk",
        "KIOSK_RETRY_MAX_SECONDS",
        Number(1, 3600),
        30.0,
        "Longest wait between the page's upload retries.",
    ),
    _s(
        "kiosk",
        "KIOSK_READBACK_WAIT_SECONDS",
        Number(5, 3600),
        90.0,
        "Past this the page thanks the person without a readback (e.g. no worker running).",
    ),
    # Supervision
    _s(
        "supervision",
        "INACTIVE_AFTER",
        Duration(86400, 366 * 86400),
        60 * 86400.0,
        "An active volunteer with no visit accepted or done for this long is looked into.",
    ),
    _s(
        "supervision",
        "UNCONFIRMED_AFTER",
        Duration(60, 30 * 86400),
        86400.0,
        "A visit done this long ago that the senior has not confirmed is looked into.",
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}
BY_ENV = {s.env: s for s in SETTINGS}


@dataclass
class Loaded:
    """The values of every setting and where each came from."""

    values: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)


def load(environ, overrides=None, *, instance, repo):
    """Return every setting's value and source: code overrides, then environment, then default.

    Raises SettingsError naming the variable for a wrong value or an unknown CARECALL_ name.
    """
    overrides = overrides or {}
    unknown = sorted(k for k in environ if k.startswith(PREFIX) and k not in BY_ENV)
    if unknown:
        raise SettingsError(_unknown_message(unknown[0]))
    loaded = Loaded()
    for setting in SETTINGS:
        names = (setting.env, *setting.aliases)
        if setting.name in overrides:
            raw, source, named = overrides[setting.name], "code", setting.name
        elif env := next((n for n in names if environ.get(n, "") != ""), None):
            raw, source, named = environ[env], f"environment ({env})", env
        else:
            raw, source, named = _default(setting, instance, repo), "default", setting.env
            if raw is None:
                loaded.values[setting.name], loaded.sources[setting.name] = None, source
                continue
        try:
            loaded.values[setting.name] = setting.value(raw)
        except _Bad as exc:
            shown = MASK if setting.secret else repr(raw)
            raise SettingsError(f"{named}={shown}: {exc}. {setting.help}") from None
        loaded.sources[setting.name] = source
    _check_together(loaded.values)
    return loaded


def _default(setting, instance, repo):
    """Return a setting's default with the instance and repository folders filled in."""
    if isinstance(setting.default, str):
        return setting.default.replace(INSTANCE, str(instance)).replace("{repo}", str(repo))
    return setting.default


def _check_together(values):
    """Check settings that only make sense together."""
    if values["DEFAULT_LANGUAGE"] not in values["SPEECH_ENGINES"]:
        raise SettingsError(
            f"{PREFIX}DEFAULT_LANGUAGE={values['DEFAULT_LANGUAGE']!r}: no speech engine for it"
            f" in {PREFIX}SPEECH_ENGINES ({', '.join(values['SPEECH_ENGINES'])})"
        )
    # Recordings are fetched with the SID and token together: a token alone signs webhooks
    # but every download would then fail with 401 while callers are told "we have it".
    if values["TWILIO_AUTH_TOKEN"] and not values["TWILIO_ACCOUNT_SID"]:
        raise SettingsError(
            f"{PREFIX}TWILIO_ACCOUNT_SID is unset but {PREFIX}TWILIO_AUTH_TOKEN is set:"
            " recordings are downloaded with both; set the account SID (AC + 32 hex digits)"
        )
    _check_text_model(values["TEXT_MODEL"])
    if values["LOCKOUT_BASE_SECONDS"] > values["LOCKOUT_MAX_SECONDS"]:
        raise SettingsError(
            f"{PREFIX}LOCKOUT_BASE_SECONDS must not exceed {PREFIX}LOCKOUT_MAX_SECONDS"
        )
    _check_folders(values)


def _check_text_model(name):
    """Check that TEXT_MODEL names text models CareCall can run, each once.

    A model that is named right but not installed is only a warning: requests are then
    classified by the rules alone until it is installed.
    """
    from .textmodel import EMBEDDERS, JOIN

    if name == "none":
        return
    parts = name.split(JOIN)
    for part in parts:
        if part not in EMBEDDERS:
            raise SettingsError(
                f"{PREFIX}TEXT_MODEL={name!r}: {part!r} is not a text model; "
                f"text models: {', '.join(EMBEDDERS)}, joined with {JOIN}, or none"
            )
    if twice := sorted({part for part in parts if parts.count(part) > 1}):
        raise SettingsError(f"{PREFIX}TEXT_MODEL={name!r}: names {', '.join(twice)} twice")


def _check_folders(values):
    """Check that the folders of flows and models exist and hold the languages configured."""
    from .flows import NOT_FLOWS
    from .kiosk import wording

    for name in ("FLOWS_DIR", "MODELS_DIR"):
        if not Path(values[name]).is_dir():
            raise SettingsError(f"{PREFIX}{name}={values[name]!r}: no such folder")
    # Without its flow every call in the default language, and the apology too, would fail.
    language = values["DEFAULT_LANGUAGE"]
    flow = Path(values["FLOWS_DIR"]) / f"{language}.toml"
    if language in NOT_FLOWS or not flow.is_file():
        raise SettingsError(
            f"{PREFIX}DEFAULT_LANGUAGE={language!r}: no phone flow {flow}; add it, or choose"
            f" a language with a flow in {PREFIX}FLOWS_DIR"
        )
    # Every request is classified by these: a broken file stops start-up, not each job.
    # Loaded into the cache the app classifies with, so start-up pays for it only once.
    from .classify import cached_categories

    try:
        cached_categories(Path(values["FLOWS_DIR"]) / "categories.toml", language)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{PREFIX}FLOWS_DIR={values['FLOWS_DIR']!r}: {exc}") from None
    # Every check-out counts points by these rules: a bad file fails now, not at a visit's end.
    from .ledger import PointsDataError, load_points

    try:
        load_points(Path(values["FLOWS_DIR"]) / "points.toml")
    except PointsDataError as exc:
        raise SettingsError(f"{PREFIX}FLOWS_DIR={values['FLOWS_DIR']!r}: {exc}") from None
    kiosk = values["KIOSK_LANGUAGE"]
    if kiosk is not None and kiosk not in wording.available():
        raise SettingsError(
            f"{PREFIX}KIOSK_LANGUAGE={kiosk!r}: no kiosk wording for it; have"
            f" {', '.join(wording.available())} (app/kiosk/languages/)"
        )


def _unknown_message(name):
    """Explain an unknown CARECALL_ variable, suggesting the closest known one."""
    from difflib import get_close_matches

    close = get_close_matches(name, BY_ENV, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{name} is not a CareCall setting{hint} (`flask --app app settings` lists them)"


def shown(setting, value):
    """Return a value as a person should see it, secrets masked."""
    if value is None:
        return "(unset)"
    if setting.secret:
        return MASK
    if show := getattr(setting.kind, "show", None):
        return show(value)
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def markdown_table():
    """Return the README's table of settings, generated from SETTINGS."""
    lines = ["| variable | kind | default | what it does |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        default = s.default
        if isinstance(default, str):
            default = default.replace(INSTANCE, "instance").replace("{repo}/", "")
        default = "(unset)" if default is None else shown(s, default).replace("|", "\\|")
        if s.secret and s.default is None:
            default = "(unset)"
        what = s.kind.what.replace("|", "\\|")
        lines.append(f"| `{s.env}` | {what} | `{default}` | {s.help.replace('|', '/')} |")
    return "\n".join(lines)


@click.command("settings")
@with_appcontext
@click.option("--markdown", is_flag=True, help="Print the README's settings table.")
def settings_command(markdown):
    """Print every setting with its value and where the value came from (secrets masked).

    Example: flask --app app settings
    """
    if markdown:
        click.echo(markdown_table())
        return
    config = current_app.config
    sources = current_app.extensions["carecall.settings"].sources
    width = max(len(s.env) for s in SETTINGS)
    for s in SETTINGS:
        click.echo(f"{s.env:<{width}}  {shown(s, config[s.name]):<40}  {sources[s.name]}")
