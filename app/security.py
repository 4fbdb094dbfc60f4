"""Web security for every response: CSRF on forms, strict headers, careful session cookies."""

from datetime import timedelta

from flask import current_app, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

csrf = CSRFProtect()

# These blueprints authenticate each request themselves (Twilio signature, bearer token, the
# signed link of a volunteer's page, whose forms carry a token bound to that link), never by
# session cookie, so a cross-site form cannot act through them.
CSRF_EXEMPT_BLUEPRINTS = ("telephony", "telephony_sms", "kiosk", "api", "mobile")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def add_security_headers(response):
    """Set the security headers on a response, keeping any a view set itself."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Only a deployment that serves HTTPS (and so sends Secure cookies) may pin browsers to it.
    if current_app.config.get("SESSION_COOKIE_SECURE"):
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, marked Secure on any request that came over HTTPS."""

    def get_cookie_secure(self, app):
        """Return whether the session cookie may travel only over HTTPS."""
        if super().get_cookie_secure(app):
            return True
        auto = app.config["COOKIE_SECURE"] == "auto"
        return auto and has_request_context() and request.is_secure


def init_app(app):
    """Protect forms with CSRF, exempt token-authenticated blueprints and harden cookies."""
    config = app.config
    if config["TRUST_FORWARDED_HEADERS"]:
        # Behind one proxy we run: its X-Forwarded-For names the client lock-out counts against,
        # its X-Forwarded-Proto says whether the browser used HTTPS.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1)
    config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=config["SESSION_LIFETIME"])
    if config["COOKIE_SECURE"] == "auto":
        public = (config["PUBLIC_BASE_URL"] or "").startswith("https://")
        config["SESSION_COOKIE_SECURE"] = bool(config.get("SESSION_COOKIE_SECURE") or public)
    else:
        config["SESSION_COOKIE_SECURE"] = config["COOKIE_SECURE"] == "true"
    app.session_interface = SessionInterface()
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    # Flask ships SameSite=None and Secure=False; keep whatever the deployment chose instead.
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    csrf.init_app(app)
    for name in CSRF_EXEMPT_BLUEPRINTS:
        if name in app.blueprints:
            csrf.exempt(app.blueprints[name])
    app.after_request(add_security_headers)
