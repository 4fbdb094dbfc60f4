"""Who may use the console and API: users, roles, passwords, lock-out and bearer tokens."""

import functools
import getpass
import hashlib
import math
import secrets
import time
from dataclasses import dataclass

import click
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from flask.cli import with_appcontext

from .db import ROW_ID, get_db, note_use, write_if_free
from .queue import now, record_event

# What each role may do; a permission is checked, never a role name.
PERMISSIONS = {
    "admin": frozenset({"view", "act", "supervise", "manage_users", "manage_kiosks"}),
    # Supervision (complaints, no-shows, decisions about volunteers) is not for viewers.
    "coordinator": frozenset({"view", "act", "supervise"}),
    "viewer": frozenset({"view"}),
}
ROLES = tuple(PERMISSIONS)
TOKEN_PREFIX = "cc_"
MIN_PASSWORD_LENGTH = 10
# Long enough for any passphrase or password manager; longer is refused before argon2 runs.
MAX_PASSWORD_LENGTH = 1024
MAX_NAME_LENGTH = 64
# The lock-out row that counts every name tried from one client (no user is named "").
ANY_NAME = ""
# A session's last activity is written at most this often, not on every poll of the queue.
SESSION_TOUCH_SECONDS = 60


@functools.cache
def password_hasher(time_cost=3, memory_kib=65536, parallelism=4):
    """Return an argon2id hasher with these costs (the defaults are argon2-cffi's)."""
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)


def hasher_for(config):
    """Return the password hasher app config asks for."""
    return password_hasher(
        config["PASSWORD_HASH_TIME_COST"],
        config["PASSWORD_HASH_MEMORY_KIB"],
        config["PASSWORD_HASH_PARALLELISM"],
    )


@functools.cache
def _dummy_hash(hasher):
    """Return a hash to verify against when the user does not exist.

    A wrong name then costs as long as a wrong password, so timing does not reveal names.
    """
    return hasher.hash(secrets.token_hex(16))


class AccountError(Exception):
    """An account operation could not be done."""


class BadCredentials(AccountError):
    """The name or password is wrong, or the account is disabled."""


class LockedOut(AccountError):
    """Too many failed logins: wait retry_after seconds."""

    def __init__(self, retry_after):
        super().__init__(f"too many failed attempts; try again in {math.ceil(retry_after)} s")
        self.retry_after = retry_after


class BadAccountField(AccountError, ValueError):
    """A name, role or password is not acceptable."""


class UnknownAccount(AccountError, LookupError):
    """No user or token has that name or id."""


@dataclass(frozen=True)
class Principal:
    """Someone acting: a logged-in user or an API token."""

    kind: str  # user or token
    id: int
    name: str
    role: str

    @property
    def actor(self):
        """Return how audit events name this principal, e.g. user:alice."""
        return f"{self.kind}:{self.name}"

    def can(self, permission):
        """Return whether this principal's role grants the permission."""
        return permission in PERMISSIONS.get(self.role, ())


@dataclass(frozen=True)
class LockoutPolicy:
    """How many failures lock a client out, and for how long, doubling each time.

    Failures count per client and name, so nobody can lock a known name out from their
    own address, and per client across names, so one address cannot try name after name.
    """

    max_failures: int = 5
    base_seconds: float = 30.0
    max_seconds: float = 3600.0
    client_max_failures: int = 20

    def delay(self, failures, allowed=None):
        """Return how long a key with this many consecutive failures stays locked."""
        allowed = self.max_failures if allowed is None else allowed
        if failures < allowed:
            return 0.0
        return min(self.base_seconds * 2 ** (failures - allowed), self.max_seconds)

    def keys(self, client, name):
        """Return the (client, name, failures allowed) each attempt counts against."""
        return ((client, name, self.max_failures), (client, ANY_NAME, self.client_max_failures))


def hash_password(password, hasher=None):
    """Hash a password with argon2id."""
    return (hasher or password_hasher()).hash(password)


def generate_password():
    """Return a new random password for someone to be told once."""
    return secrets.token_urlsafe(12)


def check_name(name):
    """Raise BadAccountField unless name could be a user's name."""
    if not name or len(name) > MAX_NAME_LENGTH or any(c.isspace() for c in name):
        raise BadAccountField(f"name must be 1-{MAX_NAME_LENGTH} characters without spaces")


def check_password(password):
    """Raise BadAccountField unless password is long enough and not absurdly long."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise BadAccountField(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadAccountField(f"password must be at most {MAX_PASSWORD_LENGTH} characters")


def check_role(role):
    """Raise BadAccountField unless role is a known role."""
    if role not in PERMISSIONS:
        raise BadAccountField(f"role must be one of {', '.join(ROLES)}, not {role!r}")


def create_user(db, name, role, password, *, hasher=None, actor="system"):
    """Create a user with a hashed password; return its row without the hash."""
    name = (name or "").strip()
    check_role(role)
    check_name(name)
    check_password(password)
    if db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
        raise BadAccountField(f"user {name!r} already exists")
    row = {"name": name, "role": role, "password_hash": hash_password(password, hasher)}
    with db.atomic():
        user_id = db["users"].insert({**row, "active": 1, "created_at": now()}).last_pk
        record_event(db, None, actor, "user_created", {"user": name, "role": [None, role]})
    return get_user(db, user_id)


def get_user(db, user_id):
    """Return an active user's public fields by id, or None."""
    row = db.execute(
        "SELECT id, name, role, active, created_at FROM users WHERE id = ?", [user_id]
    ).fetchone()
    if row is None:
        return None
    return dict(zip(("id", "name", "role", "active", "created_at"), row, strict=True))


def list_users(db):
    """Return every user's public fields, by name."""
    rows = db.execute("SELECT id, name, role, active, created_at FROM users ORDER BY name")
    return [dict(zip(("id", "name", "role", "active", "created_at"), r, strict=True)) for r in rows]


def set_active(db, name, active, *, actor="system"):
    """Enable or disable a user by name, audited."""
    with db.atomic():
        cursor = db.execute("UPDATE users SET active = ? WHERE name = ?", [int(active), name])
        if cursor.rowcount == 0:
            raise UnknownAccount(f"no user {name!r}")
        if not active:
            db.execute(
                "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE name = ?)", [name]
            )
        detail = {"user": name, "active": [int(not active), int(active)]}
        record_event(db, None, actor, "user_enabled" if active else "user_disabled", detail)


def principal_for_user(db, user_id):
    """Return the Principal for an active user id, or None."""
    user = get_user(db, user_id)
    if user is None or not user["active"]:
        return None
    return Principal("user", user["id"], user["name"], user["role"])


def authenticate(db, name, password, *, client, policy, hasher=None, clock=time.time):
    """Check a name and password from a client under the lock-out policy; return the Principal.

    A name or password no account could have is refused before anything is counted or
    stored, and before argon2 runs on it.
    """
    hasher = hasher or password_hasher()
    name = (name or "").strip()
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        raise BadAccountField(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    check_name(name)
    at = clock()
    forget_before = at - policy.max_seconds
    keys = policy.keys(client, name)
    wait = max(_locked_for(db, key, at, forget_before, policy) for key in keys)
    if wait:
        raise LockedOut(wait)
    row = db.execute(
        "SELECT id, password_hash, active FROM users WHERE name = ?", [name]
    ).fetchone()
    ok = _verify(hasher, row[1] if row else _dummy_hash(hasher), password)
    ok = ok and row is not None and bool(row[2])
    with db.atomic():
        if not ok:
            db.execute("DELETE FROM login_attempts WHERE last_failure_at < ?", [forget_before])
            wait = max(_count_failure(db, key, at, forget_before, policy) for key in keys)
        else:
            # The client-wide count stays: one good password must not reopen a spray.
            db.execute("DELETE FROM login_attempts WHERE client = ? AND name = ?", [client, name])
            # Costs were raised since this password was set: store it at today's cost.
            if hasher.check_needs_rehash(row[1]):
                db["users"].update(row[0], {"password_hash": hash_password(password, hasher)})
    if not ok:
        if wait:
            raise LockedOut(wait)
        raise BadCredentials("wrong name or password")
    return principal_for_user(db, row[0])


def _locked_for(db, key, at, forget_before, policy):
    """Return how many seconds a (client, name) key is still locked for, or 0."""
    client, name, allowed = key
    state = db.execute(
        "SELECT failures, last_failure_at FROM login_attempts"
        " WHERE client = ? AND name = ? AND last_failure_at >= ?",
        [client, name, forget_before],
    ).fetchone()
    if state is None:
        return 0.0
    failures, last_failure_at = state
    delay = policy.delay(failures, allowed)
    # A failure counted a moment after this attempt began must not lock by itself.
    return max(0.0, last_failure_at + delay - at) if delay else 0.0


def _count_failure(db, key, at, forget_before, policy):
    """Count one more failure against a key; return how long it is now locked for."""
    client, name, allowed = key
    # One statement, so parallel wrong guesses each count.
    [(failures,)] = db.execute(
        "INSERT INTO login_attempts (client, name, failures, last_failure_at)"
        " VALUES (?, ?, 1, ?) ON CONFLICT (client, name) DO UPDATE SET"
        " failures = CASE WHEN last_failure_at < ? THEN 1 ELSE failures + 1 END,"
        " last_failure_at = excluded.last_failure_at"
        " RETURNING failures",
        [client, name, at, forget_before],
    ).fetchall()
    return policy.delay(failures, allowed)


def _verify(hasher, password_hash, password):
    """Return whether password matches the argon2 hash."""
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _token_hash(token):
    """Return the stored form of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db, name, role, *, actor="system"):
    """Create an API token; return (the token, shown only now, and its row)."""
    check_role(role)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise BadAccountField(f"a token's name must be 1-{MAX_NAME_LENGTH} characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = {"name": name, "role": role, "token_hash": _token_hash(token), "created_at": now()}
    with db.atomic():
        token_id = db["api_tokens"].insert(row).last_pk
        detail = {"token": token_id, "name": name, "role": [None, role]}
        record_event(db, None, actor, "token_created", detail)
    return token, {"id": token_id, "name": name, "role": role, "created_at": row["created_at"]}


def list_tokens(db):
    """Return every token's public fields, newest first."""
    cols = ("id", "name", "role", "created_at", "last_used_at", "revoked_at")
    rows = db.execute(f"SELECT {', '.join(cols)} FROM api_tokens ORDER BY id DESC")
    return [dict(zip(cols, r, strict=True)) for r in rows]


def revoke_token(db, token_id, *, actor="system"):
    """Revoke a token by id so it no longer authenticates, audited."""
    with db.atomic():
        cursor = db.execute(
            "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            [now(), token_id],
        )
        if cursor.rowcount == 0:
            raise UnknownAccount(f"no live token {token_id}")
        record_event(db, None, actor, "token_revoked", {"token": token_id})


def principal_for_token(db, token):
    """Return the Principal for a live bearer token, or None."""
    if not token or not token.startswith(TOKEN_PREFIX):
        return None
    row = db.execute(
        "SELECT id, name, role, last_used_at FROM api_tokens"
        " WHERE token_hash = ? AND revoked_at IS NULL",
        [_token_hash(token)],
    ).fetchone()
    if row is None:
        return None
    note_use(db, "api_tokens", "last_used_at", row[0], row[3])
    return Principal("token", row[0], row[1], row[2])


def lockout_policy(config):
    """Build the lock-out policy from app config."""
    return LockoutPolicy(
        max_failures=config["LOGIN_MAX_FAILURES"],
        base_seconds=config["LOCKOUT_BASE_SECONDS"],
        max_seconds=config["LOCKOUT_MAX_SECONDS"],
        client_max_failures=config["LOGIN_MAX_FAILURES_PER_CLIENT"],
    )


def start_session(db, user_id, *, client, lifetime, clock=time.time):
    """Open a console session for a user; return its token, for the signed cookie only."""
    token = secrets.token_urlsafe(32)
    at = clock()
    with db.atomic():
        db.execute("DELETE FROM sessions WHERE last_seen_at < ?", [at - lifetime])
        db["sessions"].insert(
            {
                "token_hash": _token_hash(token),
                "user_id": user_id,
                "client": client,
                "created_at": now(),
                "last_seen_at": at,
            }
        )
    return token


def principal_for_session(db, token, *, lifetime, clock=time.time):
    """Return the Principal of a live session token, or None if it ended, expired or is unknown."""
    if not token or not isinstance(token, str):
        return None
    key = _token_hash(token)
    row = db.execute(
        "SELECT user_id, last_seen_at FROM sessions WHERE token_hash = ?", [key]
    ).fetchone()
    if row is None:
        return None
    at = clock()
    user_id, last_seen_at = row
    # Bookkeeping only: skipped while another writer holds the lock, never waited for.
    if at - last_seen_at > lifetime:
        write_if_free(db, "DELETE FROM sessions WHERE token_hash = ?", [key])
        return None
    if at - last_seen_at > SESSION_TOUCH_SECONDS:
        write_if_free(db, "UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?", [at, key])
    return principal_for_user(db, user_id)


def end_session(db, token):
    """End one console session, so its cookie no longer works anywhere."""
    if token and isinstance(token, str):
        db.execute("DELETE FROM sessions WHERE token_hash = ?", [_token_hash(token)])


def change_password(db, name, current, new, *, client, policy, hasher=None, clock=time.time):
    """Change a user's own password after checking the current one; end all their sessions.

    The current password is checked like a login, lock-out included, so a stolen session
    cannot guess it.
    """
    check_password(new)
    try:
        principal = authenticate(
            db, name, current, client=client, policy=policy, hasher=hasher, clock=clock
        )
    except BadAccountField:
        raise BadCredentials("the current password is wrong") from None
    _set_password(db, principal.id, new, hasher, actor=principal.actor, action="password_changed")
    return principal


def reset_password(db, name, new, *, hasher=None, actor="system"):
    """Set a user's password for them, as an administrator; end all their sessions."""
    row = db.execute("SELECT id FROM users WHERE name = ?", [name]).fetchone()
    if row is None:
        raise UnknownAccount(f"no user {name!r}")
    _set_password(db, row[0], new, hasher, actor=actor, action="password_reset")


def _set_password(db, user_id, password, hasher, *, actor, action):
    """Store a new password for a user, end every session they have, audited."""
    check_password(password)
    password_hash = hash_password(password, hasher)
    with db.atomic():
        db["users"].update(user_id, {"password_hash": password_hash})
        db.execute("DELETE FROM sessions WHERE user_id = ?", [user_id])
        name = db.execute("SELECT name FROM users WHERE id = ?", [user_id]).fetchone()[0]
        record_event(db, None, actor, action, {"user": name})


def cli_actor():
    """Name the person at the terminal in audit events."""
    return f"cli:{getpass.getuser()}"


@click.group("users")
def users_cli():
    """Manage console users.

    Example: flask --app app users create alice --role coordinator
    """


@users_cli.command("create")
@with_appcontext
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the user may do.")
@click.option(
    "--generate-password", "generate", is_flag=True, help="Generate a password and print it once."
)
def users_create(name, role, generate):
    """Create a user, asking for a password or generating one.

    Example: flask --app app users create alice --role coordinator --generate-password
    """
    if generate:
        password = generate_password()
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = create_user(
            get_db(), name, role, password, hasher=hasher_for(current_app.config), actor=cli_actor()
        )
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created {user['role']} {user['name']}")
    if generate:
        click.echo(f"password: {password}")


@users_cli.command("list")
@with_appcontext
def users_list():
    """List users and their roles.

    Example: flask --app app users list
    """
    db = get_db()
    for user in list_users(db):
        state = "active" if user["active"] else "disabled"
        click.echo(f"{user['name']:<24} {user['role']:<12} {state}")


@users_cli.command("reset-password")
@with_appcontext
@click.argument("name")
def users_reset_password(name):
    """Give a user a new generated password, printed once, and log out their sessions.

    Example: flask --app app users reset-password alice
    """
    password = generate_password()
    try:
        reset_password(
            get_db(), name, password, hasher=hasher_for(current_app.config), actor=cli_actor()
        )
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"reset the password of {name}; their sessions are logged out")
    click.echo(f"password: {password}")


@users_cli.command("disable")
@with_appcontext
@click.argument("name")
def users_disable(name):
    """Disable a user so they can no longer log in.

    Example: flask --app app users disable alice
    """
    try:
        set_active(get_db(), name, False, actor=cli_actor())
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"disabled {name}")


@click.group("tokens")
def tokens_cli():
    """Manage API bearer tokens.

    Example: flask --app app tokens create --role coordinator --name dispatch-bot
    """


@tokens_cli.command("create")
@with_appcontext
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the token may do.")
@click.option("--name", default="api", show_default=True, help="Who or what uses the token.")
def tokens_create(role, name):
    """Create an API token and print it once; only its hash is stored.

    Example: flask --app app tokens create --role coordinator --name dispatch-bot
    """
    try:
        token, row = create_token(get_db(), name, role, actor=cli_actor())
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"token {row['id']} ({row['role']}, {row['name']}): {token}")


@tokens_cli.command("list")
@with_appcontext
def tokens_list():
    """List API tokens (never their secret part).

    Example: flask --app app tokens list
    """
    db = get_db()
    for t in list_tokens(db):
        state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "live"
        click.echo(f"{t['id']:>4} {t['name']:<20} {t['role']:<12} {state}")


@tokens_cli.command("revoke")
@with_appcontext
@click.argument("token_id", type=ROW_ID)
def tokens_revoke(token_id):
    """Revoke an API token by id.

    Example: flask --app app tokens revoke 3
    """
    try:
        revoke_token(get_db(), token_id, actor=cli_actor())
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"revoked token {token_id}")


def init_app(app):
    """Register the users and tokens commands."""
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
