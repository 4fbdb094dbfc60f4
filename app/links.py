"""Signed volunteer links: the credential in an offer SMS that opens that offer's own page.

A link names one assignment and its volunteer, signed with SECRET_KEY (itsdangerous, salt
"volunteer-link") and dated, so it opens that one page and only for VOLUNTEER_LINK_LIFETIME.
The page's forms carry a token derived from the link (another salt): a form is good for the
link it was shown under and for no other.
"""

from dataclasses import dataclass

from itsdangerous import (
    BadData,
    BadSignature,
    SignatureExpired,
    Signer,
    URLSafeTimedSerializer,
    base64_decode,
    base64_encode,
)

from .queue import MAX_ROW_ID

SALT = "volunteer-link"
FORM_SALT = "volunteer-link-form"
PATH = "/v/"


class LinkError(Exception):
    """A link opens nothing."""


class BadLink(LinkError):
    """A link was altered, cut short, or signed with another key or for another use."""


class ExpiredLink(LinkError):
    """A link is older than VOLUNTEER_LINK_LIFETIME."""


@dataclass(frozen=True)
class Link:
    """What a good link names: one assignment and the volunteer it was offered to."""

    assignment_id: int
    volunteer_id: int


def make(secret, assignment_id, volunteer_id):
    """Return the signed, dated token for one volunteer's assignment."""
    return URLSafeTimedSerializer(secret, salt=SALT).dumps([assignment_id, volunteer_id])


def read(secret, token, *, max_age):
    """Return the Link a token names, or raise BadLink or ExpiredLink."""
    # Base64 leaves spare bits in the signature's last character: "…E" and "…F" decode alike.
    # Only the one spelling CareCall wrote opens the page.
    signature = token.rpartition(".")[2]
    try:
        canonical = base64_encode(base64_decode(signature)).decode("ascii") == signature
    except (BadData, ValueError):
        canonical = False
    if not canonical:
        raise BadLink("this link is not one CareCall signed")
    try:
        payload = URLSafeTimedSerializer(secret, salt=SALT).loads(token, max_age=max_age)
    except SignatureExpired:
        raise ExpiredLink("this link has expired") from None
    except BadSignature:
        raise BadLink("this link is not one CareCall signed") from None
    ids = payload if isinstance(payload, list) else []
    # Our own signature on another shape would be our bug; still, it opens nothing. An id
    # past SQLite's integers (queue.MAX_ROW_ID) names no row either.
    if len(ids) != 2 or not all(type(i) is int and 0 < i <= MAX_ROW_ID for i in ids):
        raise BadLink("this link names no offer")
    return Link(*ids)


def url(config, assignment_id, volunteer_id):
    """Return the address of an assignment's page for its volunteer, or None without one."""
    base = (config.get("PUBLIC_BASE_URL") or "").rstrip("/")
    if not base:
        return None  # an SMS needs an address people can open; localhost is none
    return base + PATH + make(config["SECRET_KEY"], assignment_id, volunteer_id)


def form_token(secret, token):
    """Return the CSRF token the page's forms carry under this link."""
    return Signer(secret, salt=FORM_SALT).get_signature(token).decode("ascii")


def form_token_ok(secret, token, sent):
    """Return whether a form's token belongs to this link (compared in constant time)."""
    if not sent:
        return False
    return Signer(secret, salt=FORM_SALT).verify_signature(token, sent.encode("ascii", "replace"))
