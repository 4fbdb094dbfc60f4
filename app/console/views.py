"""Console pages under /console: log in, the live queue, one request, users, tokens, kiosks."""

import functools
import math
import mimetypes
import sqlite3
from pathlib import Path

import segno
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from markupsafe import Markup
from werkzeug.exceptions import NotFound

from .. import accounts, arrangements, pipeline, queue
from ..classify import category_keys
from ..db import get_db, lock_error
from ..kiosk import devices
from . import actions, search, waiting

bp = Blueprint("console", __name__, url_prefix="/console")


@bp.before_request
def load_principal():
    """Find who is logged in for this request, if anyone: the session must still be open."""
    token = session.get("session_token")
    g.principal = None
    if token:
        g.principal = accounts.principal_for_session(
            get_db(), token, lifetime=current_app.config["SESSION_LIFETIME"]
        )
    if session.get("user_id") or (token and g.principal is None):
        # Logged out, expired or a password changed since: nothing of it may act now.
        session.clear()


def _client():
    """Return the address a request came from (the proxy's client when it is trusted)."""
    return request.remote_addr or "unknown"


def _log_in(principal):
    """Start a fresh session for principal in this browser."""
    # Nothing from before survives into the logged-in session.
    session.clear()
    session["session_token"] = accounts.start_session(
        get_db(),
        principal.id,
        client=_client(),
        lifetime=current_app.config["SESSION_LIFETIME"],
    )
    session.permanent = True


def _too_many(exc):
    """Say how long to wait after too many wrong passwords."""
    return f"Too many failed attempts. {_wait_words(exc.retry_after)}"


def require(permission):
    """Let a view run only for a logged-in principal with the permission."""

    def decorate(view):
        @functools.wraps(view)
        def wrapped(**kwargs):
            if g.principal is None:
                return redirect(url_for("console.login", next=request.full_path))
            if not g.principal.can(permission):
                abort(403)
            return view(**kwargs)

        return wrapped

    return decorate


@bp.context_processor
def console_context():
    """Give console templates the principal and plain words for categories."""
    return {
        "principal": g.get("principal"),
        "category_label": _label,
        "CATEGORY_KEYS": category_keys(),
        "URGENCIES": tuple(queue.URGENCY_RANK),
        "STATUSES": queue.STATUSES,
        "CHANNELS": queue.CHANNELS,
    }


def _labels():
    """Return the English categories, whose labels the console shows."""
    return pipeline.categories_for("en")


def _label(key):
    """Return a category key as plain words."""
    if not key:
        return "Not yet classified"
    return _labels().label(key)


def _safe_next(target):
    """Return target if it is a path inside the console, else the queue."""
    if target and target.startswith("/console") and not target.startswith("//"):
        return target
    return url_for("console.queue")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form, or log in with a name and password."""
    error, status = None, 200
    if request.method == "GET" and g.principal is not None:
        return redirect(_safe_next(request.args.get("next")))
    retry_after = None
    if request.method == "POST":
        try:
            principal = accounts.authenticate(
                get_db(),
                request.form.get("name"),
                request.form.get("password", ""),
                client=_client(),
                policy=accounts.lockout_policy(current_app.config),
                hasher=accounts.hasher_for(current_app.config),
            )
        except accounts.LockedOut as exc:
            error, status, retry_after = _too_many(exc), 429, exc.retry_after
        except accounts.BadAccountField:
            error, status = "That name or password is not one an account could have.", 400
        except accounts.BadCredentials:
            error, status = "That name and password do not match an active account.", 401
        else:
            _log_in(principal)
            return redirect(_safe_next(request.args.get("next")), code=303)
    return _form_page("console/login.html", status, retry_after, error=error)


def _form_page(template, status, retry_after, **context):
    """Render a password form's page; after too many wrong passwords, say when to retry."""
    response = current_app.make_response((render_template(template, **context), status))
    if retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(retry_after))
    return response


def _wait_words(seconds):
    """Say how long to wait in words."""
    seconds = max(1, round(seconds))
    if seconds < 120:
        return f"Try again in {seconds} seconds."
    return f"Try again in {round(seconds / 60)} minutes."


@bp.post("/logout")
def logout():
    """Log out, ending the session so a copy of its cookie no longer works, and go to login."""
    accounts.end_session(get_db(), session.get("session_token"))
    session.clear()
    return redirect(url_for("console.login"), code=303)


@bp.route("/password", methods=["GET", "POST"])
@require("view")
def password():
    """Let the logged-in user change their password; every other session of theirs ends."""
    error, status, retry_after = None, 200, None
    if request.method == "POST":
        new = request.form.get("new_password", "")
        if new != request.form.get("new_password_again", ""):
            error, status = "The two new passwords are not the same.", 400
        else:
            try:
                principal = accounts.change_password(
                    get_db(),
                    g.principal.name,
                    request.form.get("current_password", ""),
                    new,
                    client=_client(),
                    policy=accounts.lockout_policy(current_app.config),
                    hasher=accounts.hasher_for(current_app.config),
                )
            except accounts.LockedOut as exc:
                error, status, retry_after = _too_many(exc), 429, exc.retry_after
            except accounts.BadAccountField as exc:
                error, status = f"The new {exc}.", 400
            except accounts.BadCredentials:
                error, status = "That is not your current password.", 400
            else:
                _log_in(principal)
                flash("Password changed. Any other place you were logged in is logged out.", "ok")
                return redirect(url_for("console.queue"), code=303)
    return _form_page(
        "console/password.html",
        status,
        retry_after,
        error=error,
        min_length=accounts.MIN_PASSWORD_LENGTH,
        max_length=accounts.MAX_PASSWORD_LENGTH,
    )


def _queue_view(template):
    """Render the queue, or just its rows, for the filters in the query string."""
    db = get_db()
    limit = current_app.config["CONSOLE_PAGE_SIZE"]
    try:
        filters = search.Filters.from_args(request.args)
        rows, next_cursor = search.list_requests(
            db, filters, limit=limit, cursor=request.args.get("cursor") or None, exclude_pinned=True
        )
    except search.BadFilter as exc:
        # Show the first page unfiltered, with what was wrong, rather than nothing.
        filters, error = search.Filters(), str(exc)
        rows, next_cursor = search.list_requests(db, filters, limit=limit, exclude_pinned=True)
    else:
        error = None
    pinned = search.pinned(db, filters)
    stamp = queue.now()
    html = render_template(
        template,
        filters=filters,
        rows=_with_waiting(rows, stamp),
        pinned=_with_waiting(pinned, stamp),
        total=search.count_requests(db, filters, exclude_pinned=True),
        count_cap=search.count_cap(filters),
        next_cursor=next_cursor,
        filter_error=error,
        poll_ms=int(current_app.config["CONSOLE_POLL_SECONDS"] * 1000),
    )
    return html, 400 if error else 200


def _with_waiting(rows, stamp):
    """Add how long each request has waited since received, and whether that is overdue."""
    targets = waiting.load_targets()
    for row in rows:
        minutes = waiting.minutes_between(row["created_at"], stamp)
        row["waited"] = waiting.words(minutes)
        # Only open work can be late; a closed request waits for nobody.
        row["overdue"] = row["status"] not in ("done", "cancelled") and targets.overdue(
            row["urgency"], minutes
        )
    return rows


@bp.get("/", endpoint="queue")
@require("view")
def queue_page():
    """Show the live queue: critical requests pinned on top, then most urgent, longest waiting."""
    return _queue_view("console/queue.html")


@bp.get("/rows")
@require("view")
def rows():
    """Return just the queue's rows, for the page to refresh itself."""
    return _queue_view("console/_rows.html")


@bp.get("/requests/<int:request_id>")
@require("view")
def detail(request_id):
    """Show one request: recording, transcript, corrections, notes, history, duplicates."""
    db = get_db()
    item = queue.get(db, request_id)
    config = current_app.config
    history = [r for r in search.caller_history(db, item.get("phone")) if r["id"] != request_id]
    suggestions = []
    if not item.get("merged_into"):
        suggestions = actions.duplicates(
            db,
            item,
            window_hours=config["DUPLICATE_WINDOW_HOURS"],
            similarity=config["DUPLICATE_SIMILARITY"],
        )
    events = actions.visible_events(db, request_id, g.principal)
    for event in events:
        event["text"] = actions.describe(event["action"], event["detail"], _label)
    from . import visits_views  # it adds its routes to this blueprint: imported once it exists

    return render_template(
        "console/request.html",
        item=item,
        words=actions.marked_words(item.get("transcript_words"), config["LOW_WORD_CONFIDENCE"]),
        notes=actions.notes(db, request_id),
        callbacks=actions.callbacks(db, request_id),
        outcomes=actions.CALLBACK_OUTCOMES,
        history=history,
        duplicates=suggestions,
        merged=actions.merged_into(db, request_id),
        events=list(reversed(events)),
        kiosk=devices.kiosk_of(db, item),
        confirm_status=_backwards_asked(item, request.args.get("confirm")),
        visits=visits_views.visit_rows(db, request_id),
        now_local=visits_views.now_local(),
        arrangement=arrangements.choices_for(db, request_id),
    )


def _backwards_asked(item, status):
    """Return the status a coordinator must confirm moving back to, if the link asks."""
    if status in queue.STATUSES and actions.backwards(item["status"], status):
        return status
    return None


def _media(request_id, column):
    """Send a request's recording from DATA_DIR, with Range support for seeking."""
    item = queue.get(get_db(), request_id)
    relative = item.get(column)
    if not relative:
        abort(404)
    root = Path(current_app.config["DATA_DIR"]).resolve()
    path = (root / relative).resolve()
    # A stored path is data: it must never lead outside DATA_DIR.
    if not path.is_relative_to(root) or not path.is_file():
        abort(404)
    mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    response = send_file(path, mimetype=mimetype, conditional=True, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/requests/<int:request_id>/audio")
@require("view")
def audio(request_id):
    """Stream a request's audio recording."""
    return _media(request_id, "audio_path")


@bp.get("/requests/<int:request_id>/video")
@require("view")
def video(request_id):
    """Stream a request's video recording."""
    return _media(request_id, "video_path")


def _act(request_id, do, done_message):
    """Run a console action for a request, then go back to it with a message."""
    try:
        do(get_db())
    except (actions.ActionError, queue.BadRequestField) as exc:
        flash(str(exc), "error")
        return redirect(url_for("console.detail", request_id=request_id), code=303)
    flash(done_message, "ok")
    target = request.form.get("next") or url_for("console.detail", request_id=request_id)
    return redirect(_safe_next(target), code=303)


@bp.post("/requests/<int:request_id>/correct")
@require("act")
def correct(request_id):
    """Save corrections to a request's category, urgency or transcript."""
    changes = {k: request.form.get(k) for k in actions.EDITABLE if k in request.form}
    return _act(
        request_id,
        lambda db: actions.change(db, request_id, changes, actor=g.principal.actor),
        "Corrections saved.",
    )


@bp.post("/requests/<int:request_id>/status")
@require("act")
def status(request_id):
    """Move a request to another status; moving it backwards needs confirm=yes.

    The queue's keys ask for JSON: they get 409 for a step back, which they never take.
    """
    value = request.form.get("status", "")
    confirmed = request.form.get("confirm") == "yes"
    if request.accept_mimetypes.best == "application/json":
        return _status_json(request_id, value, confirmed)
    db = get_db()
    try:
        actions.set_status(db, request_id, value, actor=g.principal.actor, confirmed=confirmed)
    except actions.NeedsConfirmation as exc:
        flash(f"{str(exc).capitalize()}: confirm below.", "error")
        return redirect(url_for("console.detail", request_id=request_id, confirm=value), code=303)
    except (actions.ActionError, queue.BadRequestField) as exc:
        flash(str(exc), "error")
        return redirect(url_for("console.detail", request_id=request_id), code=303)
    flash(f"Status is now {value.replace('_', ' ')}.", "ok")
    target = request.form.get("next") or url_for("console.detail", request_id=request_id)
    return redirect(_safe_next(target), code=303)


def _status_json(request_id, value, confirmed):
    """Answer a status change from the queue's keys as JSON: 200, 404, 409 or 400."""
    try:
        item = actions.set_status(
            get_db(), request_id, value, actor=g.principal.actor, confirmed=confirmed
        )
    except queue.RequestNotFound:
        return {"error": f"no request {request_id}"}, 404
    except actions.NeedsConfirmation as exc:
        return {"error": f"{str(exc).capitalize()}: open it to do that."}, 409
    except (actions.ActionError, queue.BadRequestField) as exc:
        return {"error": str(exc)}, 400
    return {"id": item["id"], "status": item["status"]}


@bp.post("/bulk")
@require("act")
def bulk():
    """Triage, close or merge the requests selected in the queue."""
    action = request.form.get("action", "")
    target = _safe_next(request.form.get("next"))
    try:
        ids = [queue.row_id(v) for v in request.form.getlist("ids")]
    except ValueError:
        abort(400)
    try:
        changed, skipped = actions.bulk(get_db(), action, ids, actor=g.principal.actor)
    except queue.RequestNotFound as exc:
        flash(f"Nothing changed: {exc}.", "error")
        return redirect(target, code=303)
    except actions.ActionError as exc:
        flash(f"Nothing changed: {exc}.", "error")
        return redirect(target, code=303)
    listed = ", ".join(f"#{i}" for i in changed)
    done = {
        "triage": f"Triaged {listed or 'nothing'}.",
        "close": f"Closed {listed or 'nothing'}.",
        "merge": f"Merged {', '.join(f'#{i}' for i in changed[1:])} into #{changed[0]}."
        if changed
        else "",
    }[action]
    flash(done, "ok")
    if skipped:
        flash(f"Left as they were: {'; '.join(skipped)}.", "error")
    return redirect(target, code=303)


@bp.post("/requests/<int:request_id>/notes")
@require("act")
def add_note(request_id):
    """Add a note to a request."""
    body = request.form.get("body", "")
    return _act(
        request_id,
        lambda db: actions.add_note(db, request_id, body, actor=g.principal.actor),
        "Note added.",
    )


@bp.post("/requests/<int:request_id>/callbacks")
@require("act")
def add_callback(request_id):
    """Log a call back to the senior and its outcome."""
    outcome, note = request.form.get("outcome", ""), request.form.get("note", "")
    return _act(
        request_id,
        lambda db: actions.log_callback(db, request_id, outcome, note, actor=g.principal.actor),
        "Call back logged.",
    )


@bp.post("/requests/<int:request_id>/merge")
@require("act")
def merge(request_id):
    """Merge another request into this one."""
    try:
        duplicate = queue.row_id(request.form.get("duplicate", ""))
    except ValueError:
        abort(400)
    return _act(
        request_id,
        lambda db: actions.merge(db, request_id, duplicate, actor=g.principal.actor),
        f"Request {duplicate} merged into this one.",
    )


def _users_page(*, new_secret=None, new_password=None):
    """Render the users page, with a just-made token or password shown this once."""
    db = get_db()
    response = current_app.make_response(
        render_template(
            "console/users.html",
            users=accounts.list_users(db),
            tokens=accounts.list_tokens(db),
            roles=accounts.ROLES,
            new_secret=new_secret,
            new_password=new_password,
        )
    )
    # The page may carry a secret that must not outlive this one response.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/users")
@require("manage_users")
def users():
    """List users and API tokens for an administrator."""
    return _users_page()


@bp.post("/users")
@require("manage_users")
def create_user():
    """Create a user with the password an administrator typed."""
    db = get_db()
    try:
        user = accounts.create_user(
            db,
            request.form.get("name"),
            request.form.get("role"),
            request.form.get("password", ""),
            hasher=accounts.hasher_for(current_app.config),
            actor=g.principal.actor,
        )
    except accounts.AccountError as exc:
        flash(str(exc), "error")
    else:
        flash(f"Created {user['role']} {user['name']}.", "ok")
    return redirect(url_for("console.users"), code=303)


@bp.post("/users/<name>/disable")
@require("manage_users")
def disable_user(name):
    """Disable a user's account."""
    if name == g.principal.name:
        flash("You cannot disable your own account.", "error")
    else:
        try:
            accounts.set_active(get_db(), name, False, actor=g.principal.actor)
        except accounts.AccountError as exc:
            flash(str(exc), "error")
        else:
            flash(f"Disabled {name}.", "ok")
    return redirect(url_for("console.users"), code=303)


@bp.post("/users/<name>/reset-password")
@require("manage_users")
def reset_password(name):
    """Give a user a new generated password, shown once, and log out their sessions."""
    password = accounts.generate_password()
    try:
        accounts.reset_password(
            get_db(),
            name,
            password,
            hasher=accounts.hasher_for(current_app.config),
            actor=g.principal.actor,
        )
    except accounts.AccountError as exc:
        flash(str(exc), "error")
        return redirect(url_for("console.users"), code=303)
    if name == g.principal.name:
        # Resetting one's own password ends this session too; keep this browser logged in.
        _log_in(g.principal)
    return _users_page(new_password=(name, password))


@bp.post("/tokens")
@require("manage_users")
def create_token():
    """Create an API token and show it once."""
    db = get_db()
    try:
        secret, row = accounts.create_token(
            db, request.form.get("name") or "api", request.form.get("role"), actor=g.principal.actor
        )
    except accounts.AccountError as exc:
        flash(str(exc), "error")
        return redirect(url_for("console.users"), code=303)
    return _users_page(new_secret=(row, secret))


@bp.post("/tokens/<int:token_id>/revoke")
@require("manage_users")
def revoke_token(token_id):
    """Revoke an API token."""
    try:
        accounts.revoke_token(get_db(), token_id, actor=g.principal.actor)
    except accounts.AccountError as exc:
        flash(str(exc), "error")
    else:
        flash(f"Revoked token {token_id}.", "ok")
    return redirect(url_for("console.users"), code=303)


# Longer names would not fit the kiosk's page header or the queue's region column.
KIOSK_NAME_MAX = 80
KIOSK_REGION_MAX = 40


def _kiosk_form_errors(name, region):
    """Return what is wrong with a kiosk's name and region, by field."""
    errors = {}
    for field, value, limit in (
        ("name", name, KIOSK_NAME_MAX),
        ("region", region, KIOSK_REGION_MAX),
    ):
        if not value:
            errors[field] = f"Enter the kiosk's {field}."
        elif len(value) > limit:
            errors[field] = f"The {field} must be at most {limit} characters."
    return errors


def _kiosks_page(status=200, *, form=None, errors=None, added=None):
    """Render the kiosks page, with a just-added kiosk's token shown this once."""
    response = current_app.make_response(
        (
            render_template(
                "console/kiosks.html",
                kiosks=devices.listing(get_db(), include_revoked=True),
                form=form or {},
                errors=errors or {},
                added=added,
                name_max=KIOSK_NAME_MAX,
                region_max=KIOSK_REGION_MAX,
            ),
            status,
        )
    )
    # The page may carry a token that must not outlive this one response.
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/kiosks")
@require("manage_kiosks")
def kiosks():
    """List kiosk tablets for an administrator."""
    return _kiosks_page()


@bp.post("/kiosks")
@require("manage_kiosks")
def add_kiosk():
    """Register a kiosk tablet and show its token and address once."""
    form = {k: (request.form.get(k) or "").strip() for k in ("name", "region")}
    errors = _kiosk_form_errors(form["name"], form["region"])
    if errors:
        return _kiosks_page(400, form=form, errors=errors)
    kiosk, token = devices.add(
        get_db(), form["name"], region=form["region"], actor=g.principal.actor
    )
    url = url_for("kiosk.page", token=token, _external=True)
    return _kiosks_page(added=(kiosk, token, url, _qr_svg(url)))


def _qr_svg(text):
    """Return text as a QR code in inline SVG, drawn here: no script, no outside service."""
    # Medium error correction still reads from a screen photographed at an angle.
    code = segno.make(text, error="m")
    return Markup(code.svg_inline(scale=4, border=4, title="QR code of the kiosk address"))


@bp.route("/kiosks/<int:kiosk_id>/revoke", methods=["GET", "POST"])
@require("manage_kiosks")
def revoke_kiosk(kiosk_id):
    """Ask before revoking a kiosk's token; revoke it once the administrator confirms."""
    db = get_db()
    try:
        kiosk = devices.get(db, kiosk_id)
    except devices.KioskNotFound:
        abort(404)
    if kiosk.revoked_at:
        flash(f"Kiosk {kiosk.name} was already revoked.", "error")
        return redirect(url_for("console.kiosks"), code=303)
    if request.method == "GET" or request.form.get("confirm") != "yes":
        return render_template("console/revoke_kiosk.html", kiosk=kiosk)
    devices.revoke(db, kiosk_id, actor=g.principal.actor)
    flash(f"Revoked kiosk {kiosk.name}: its tablet can no longer send requests.", "ok")
    return redirect(url_for("console.kiosks"), code=303)


# A write outside a transaction (logging out, a session's note) can still meet the lock.
bp.register_error_handler(sqlite3.OperationalError, lock_error)


@bp.errorhandler(400)
@bp.errorhandler(403)
@bp.errorhandler(404)
def console_error(error):
    """Show an error as a page a person can act on; a missing CSRF token is a 400."""
    return render_template("console/error.html", error=error), error.code


@bp.errorhandler(queue.RequestNotFound)
def request_not_found(error):
    """Answer any page that names a request nobody has as the console's 404 page."""
    return console_error(NotFound())
