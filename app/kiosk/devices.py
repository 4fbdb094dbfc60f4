"""Kiosk tablets as devices: each holds a bearer token naming its centre and region.

Tokens are 256-bit random strings, so a plain SHA-256 is enough to store them safely;
a slow password hash would only make every upload slower.
"""

import hashlib
import secrets
from dataclasses import dataclass

from ..db import note_use
from ..queue import now, record_event, row_id

TOKEN_BYTES = 32
HINT_CHARS = 6


class KioskNotFound(LookupError):
    """No kiosk has that id or name."""


class AmbiguousKiosk(LookupError):
    """More than one kiosk has that name."""


class BadToken(PermissionError):
    """The bearer token is missing, unknown or revoked."""


@dataclass(frozen=True)
class Kiosk:
    """A registered kiosk tablet."""

    id: int
    name: str
    region: str
    language: str | None
    token_hint: str
    created_at: str
    last_seen_at: str | None
    revoked_at: str | None

    @property
    def actor(self):
        """Name this kiosk in audit events."""
        return f"kiosk:{self.name}"

    @property
    def source_prefix(self):
        """Return the prefix of the source key of every request this kiosk sent."""
        return f"kiosk:{self.id}:"

    def to_dict(self):
        """Return the kiosk as a JSON-ready dict (never the token)."""
        return {
            "id": self.id,
            "name": self.name,
            "region": self.region,
            "language": self.language,
            "token_hint": self.token_hint,
            "created_at": self.created_at,
            "last_seen_at": self.last_seen_at,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_row(cls, row):
        """Build a Kiosk from a kiosks table row."""
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


def hash_token(token):
    """Return the stored form of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


def add(db, name, *, region, language=None, actor="system"):
    """Register a kiosk, audited; return (kiosk, token) — the token is shown this once only."""
    name, region = name.strip(), region.strip()
    if not name or not region:
        raise ValueError("a kiosk needs a name and a region")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = {
        "name": name,
        "region": region,
        "language": language,
        "token_hash": hash_token(token),
        "token_hint": token[:HINT_CHARS],
        "created_at": now(),
    }
    with db.atomic():
        kiosk_id = db["kiosks"].insert(row).last_pk
        detail = {"kiosk": kiosk_id, "name": name, "region": region}
        record_event(db, None, actor, "kiosk_added", detail)
    return get(db, kiosk_id), token


def get(db, kiosk_id):
    """Return one kiosk by id."""
    rows = list(db["kiosks"].rows_where("id = ?", [kiosk_id]))
    if not rows:
        raise KioskNotFound(f"no kiosk {kiosk_id}")
    return Kiosk.from_row(rows[0])


def find(db, id_or_name):
    """Return the kiosk with this id (digits) or exact name."""
    text = str(id_or_name).strip()
    if text.isdigit():
        try:
            return get(db, row_id(text))
        except ValueError:
            raise KioskNotFound(f"no kiosk {text}") from None
    rows = list(db["kiosks"].rows_where("name = ?", [text]))
    if not rows:
        raise KioskNotFound(f"no kiosk named {text!r}")
    if len(rows) > 1:
        ids = ", ".join(str(r["id"]) for r in rows)
        raise AmbiguousKiosk(f"{len(rows)} kiosks are named {text!r} (ids {ids}): use the id")
    return Kiosk.from_row(rows[0])


def listing(db, *, include_revoked=False):
    """Return kiosks in the order they were registered."""
    where = None if include_revoked else "revoked_at IS NULL"
    return [Kiosk.from_row(row) for row in db["kiosks"].rows_where(where, order_by="id")]


def authenticate(db, token):
    """Return the active kiosk holding this token, or raise BadToken."""
    if not token:
        raise BadToken("a kiosk token is required")
    rows = list(db["kiosks"].rows_where("token_hash = ?", [hash_token(token)]))
    if not rows or rows[0]["revoked_at"]:
        raise BadToken("this kiosk token is not valid")
    return Kiosk.from_row(rows[0])


def revoke(db, kiosk_id, *, actor="system"):
    """Stop a kiosk's token from working, audited; return the kiosk."""
    kiosk = get(db, kiosk_id)
    if kiosk.revoked_at is None:
        with db.atomic():
            db["kiosks"].update(kiosk_id, {"revoked_at": now()})
            record_event(db, None, actor, "kiosk_revoked", {"kiosk": kiosk_id, "name": kiosk.name})
    return get(db, kiosk_id)


def seen(db, kiosk):
    """Note that a kiosk just sent something (at most once a minute, never waiting the lock)."""
    note_use(db, "kiosks", "last_seen_at", kiosk.id, kiosk.last_seen_at)


def kiosk_of(db, request):
    """Return the kiosk a request came from, or None for requests from elsewhere."""
    key = request.get("source_key") or ""
    prefix, _, rest = key.partition(":")
    kiosk_id, _, _ = rest.partition(":")
    if prefix != "kiosk" or not kiosk_id.isdigit():
        return None
    try:
        return get(db, int(kiosk_id))
    except KioskNotFound:
        return None
