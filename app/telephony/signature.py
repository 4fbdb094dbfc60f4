"""Webhook security: every request must carry Twilio's signature over the URL Twilio used."""

from functools import wraps
from urllib.parse import urlsplit

from flask import abort, current_app, request
from twilio.request_validator import RequestValidator

HEADER = "X-Twilio-Signature"


class SignatureRejected(Exception):
    """A webhook's X-Twilio-Signature did not match, or no auth token is configured."""


def public_url(req, *, public_base_url=None, trust_forwarded=False):
    """Return the URL Twilio requested, as seen before any TLS-terminating proxy."""
    path = req.full_path if req.query_string else req.path
    if public_base_url:
        base = urlsplit(public_base_url)
        return f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{path}"
    if trust_forwarded:
        scheme = req.headers.get("X-Forwarded-Proto", req.scheme).split(",")[0].strip()
        host = req.headers.get("X-Forwarded-Host", req.host).split(",")[0].strip()
        prefix = req.headers.get("X-Forwarded-Prefix", "").rstrip("/")
        return f"{scheme}://{host}{prefix}{req.script_root}{path}"
    return f"{req.scheme}://{req.host}{req.script_root}{path}"


def check(req, config):
    """Raise SignatureRejected unless req is signed with the account's auth token."""
    token = config.get("TWILIO_AUTH_TOKEN")
    if not token:
        raise SignatureRejected("TWILIO_AUTH_TOKEN is not configured: every webhook is refused")
    signature = req.headers.get(HEADER, "")
    url = public_url(
        req,
        public_base_url=config.get("PUBLIC_BASE_URL"),
        trust_forwarded=config["TRUST_FORWARDED_HEADERS"],
    )
    params = req.form if req.method == "POST" else {}
    if not signature or not RequestValidator(token).validate(url, params, signature):
        raise SignatureRejected(f"bad {HEADER} for {url}")


def twilio_only(view):
    """Answer a view only for requests Twilio signed; anything else gets 403 and no side effects."""

    @wraps(view)
    def checked(*args, **kwargs):
        try:
            check(request, current_app.config)
        except SignatureRejected as exc:
            current_app.logger.warning("twilio webhook refused: %s", exc)
            abort(403)
        return view(*args, **kwargs)

    return checked
