"""Accounts: argon2 passwords, lock-out with back-off, hashed API tokens and their commands."""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import click
import pytest
from sqlite_utils import Database

from app import accounts
from app.db import connect
from tests.test_console import FAST, PASSWORD, csrf_token, fast_hasher, login, make_user, post_form


@pytest.fixture(autouse=True)
def fast_hashing(app):
    """Hash passwords at test-sized cost in this module's app."""
    app.config.update(
        PASSWORD_HASH_TIME_COST=1, PASSWORD_HASH_MEMORY_KIB=64, PASSWORD_HASH_PARALLELISM=1
    )


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


POLICY = accounts.LockoutPolicy(max_failures=3, base_seconds=10, max_seconds=60)


def auth(db, name, password, clock, client="203.0.113.1", policy=POLICY):
    """Authenticate from a client under the test policy and clock."""
    return accounts.authenticate(
        db, name, password, client=client, policy=policy, hasher=fast_hasher(), clock=clock
    )


def test_password_is_stored_as_argon2id_hash(db):
    make_user(db, "alice", "coordinator")
    stored = db.execute("SELECT password_hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0), (2, 0), (3, 10), (4, 20), (5, 40), (6, 60), (30, 60)]
)
def test_lockout_backs_off_doubling_up_to_a_cap(failures, delay):
    assert POLICY.delay(failures) == delay


def test_lockout_blocks_even_the_right_password_until_it_expires(db):
    make_user(db, "alice", "coordinator")
    clock = Clock()
    for _ in range(2):
        with pytest.raises(accounts.BadCredentials):
            auth(db, "alice", "wrong password", clock)
    with pytest.raises(accounts.LockedOut) as locked:
        auth(db, "alice", "wrong password", clock)
    assert locked.value.retry_after == 10
    clock.now += 9
    with pytest.raises(accounts.LockedOut):
        auth(db, "alice", PASSWORD, clock)
    clock.now += 2
    with pytest.raises(accounts.LockedOut) as again:
        auth(db, "alice", "still wrong", clock)
    assert again.value.retry_after == 20
    clock.now += 21
    assert auth(db, "alice", PASSWORD, clock).name == "alice"
    # Success forgets the failures.
    with pytest.raises(accounts.BadCredentials):
        auth(db, "alice", "wrong password", clock)


def test_unknown_names_and_disabled_users_fail_alike(db):
    make_user(db, "bob", "viewer")
    accounts.set_active(db, "bob", False)
    clock = Clock()
    for name in ("bob", "nobody"):
        with pytest.raises(accounts.BadCredentials):
            auth(db, name, PASSWORD, clock)


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("", "viewer", PASSWORD, "name must be"),
        ("two words", "viewer", PASSWORD, "name must be"),
        ("carol", "superuser", PASSWORD, "role must be"),
        ("carol", "viewer", "short", "at least 10"),
        ("c" * 65, "viewer", PASSWORD, "name must be"),
        ("carol", "viewer", "p" * 1025, "at most 1024"),
    ],
)
def test_bad_accounts_are_refused(db, name, role, password, message):
    with pytest.raises(accounts.BadAccountField, match=message):
        accounts.create_user(db, name, role, password, hasher=fast_hasher())


def test_tokens_are_stored_hashed_and_revocable(db):
    token, row = accounts.create_token(db, "bot", "coordinator")
    assert token not in str(list(db["api_tokens"].rows))
    principal = accounts.principal_for_token(db, token)
    assert (principal.actor, principal.role) == ("token:bot", "coordinator")
    assert accounts.principal_for_token(db, token + "x") is None
    accounts.revoke_token(db, row["id"])
    assert accounts.principal_for_token(db, token) is None
    with pytest.raises(accounts.UnknownAccount):
        accounts.revoke_token(db, row["id"])


@pytest.mark.parametrize(
    ("role", "permission", "allowed"),
    [
        ("admin", "manage_users", True),
        ("admin", "act", True),
        ("coordinator", "act", True),
        ("coordinator", "manage_users", False),
        ("viewer", "view", True),
        ("viewer", "act", False),
        ("stranger", "view", False),
    ],
)
def test_permissions_by_role(role, permission, allowed):
    assert accounts.Principal("user", 1, "x", role).can(permission) is allowed


def test_login_logout_through_the_forms(db, client):
    make_user(db, "alice", "coordinator")
    assert login(client, "alice").headers["Location"] == "/console/"
    assert client.get("/console/").status_code == 200
    client.post("/console/logout", data={"csrf_token": csrf_token(client, "/console/")})
    assert client.get("/console/").status_code == 302


def test_login_only_redirects_inside_the_console(db, client):
    make_user(db, "alice", "coordinator")
    token = csrf_token(client)
    response = client.post(
        "/console/login?next=https://evil.example/",
        data={"name": "alice", "password": PASSWORD, "csrf_token": token},
    )
    assert response.headers["Location"] == "/console/"


def test_login_locks_out_with_429_after_repeated_failures(app, db, client):
    app.config.update(LOGIN_MAX_FAILURES=2, LOCKOUT_BASE_SECONDS=300)
    make_user(db, "alice", "coordinator")
    assert login(client, "alice", "nope nope nope").status_code == 401
    locked = login(client, "alice", "nope nope nope")
    assert locked.status_code == 429 and b"Too many failed attempts" in locked.data
    assert login(client, "alice").status_code == 429


def test_login_without_csrf_token_is_400(db, client):
    make_user(db, "alice", "coordinator")
    response = client.post("/console/login", data={"name": "alice", "password": PASSWORD})
    assert response.status_code == 400


def test_cli_creates_users_and_tokens(app, db, runner):
    result = runner.invoke(
        args=["users", "create", "dora", "--role", "admin", "--generate-password"]
    )
    assert result.exit_code == 0, result.output
    password = result.output.split("password: ")[1].strip()
    assert auth(db, "dora", password, Clock()).role == "admin"
    result = runner.invoke(args=["users", "create", "eve", "--role", "viewer"], input="pw\npw\n")
    assert result.exit_code == 1 and "at least 10" in result.output
    result = runner.invoke(args=["tokens", "create", "--role", "viewer", "--name", "reports"])
    token = result.output.rsplit(": ", 1)[1].strip()
    assert accounts.principal_for_token(db, token).name == "reports"
    assert "reports" in runner.invoke(args=["tokens", "list"]).output
    assert runner.invoke(args=["tokens", "revoke", "1"]).exit_code == 0
    assert accounts.principal_for_token(db, token) is None
    assert "disabled" in runner.invoke(args=["users", "disable", "dora"]).output


def _commands(group, prefix=()):
    """Yield (path, command) for every command under a click group."""
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


@pytest.mark.parametrize("path", [("users",), ("tokens",), ("export-corrections",)])
def test_every_console_command_documents_an_example(app, path):
    group = app.cli.commands[path[0]]
    commands = [((*path,), group)]
    if isinstance(group, click.Group):
        commands += [((*path, *p), c) for p, c in _commands(group)]
    for name, command in commands:
        assert "Example: flask --app app " + " ".join(name) in (command.help or ""), name


# --- Lock-out by client and name, input bounds, sessions that end ---------------------------

A, B = "203.0.113.1", "198.51.100.7"


def client_at(app, address, **kwargs):
    """Return a test client whose requests come from address."""
    client = app.test_client(**kwargs)
    client.environ_base["REMOTE_ADDR"] = address
    return client


@pytest.mark.parametrize(
    ("address", "name", "status"),
    [
        (A, "admin", 429),  # the place the wrong passwords came from, for that name
        (B, "admin", 303),  # the real admin, elsewhere, still gets in
        (A, "alice", 303),  # another account from the same place is not locked
    ],
)
def test_wrong_passwords_lock_only_that_client_and_name(app, db, address, name, status):
    make_user(db, "admin", "admin")
    make_user(db, "alice", "coordinator")
    attacker = client_at(app, A)
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        login(attacker, "admin", "not the password")
    response = login(client_at(app, address), name)
    assert response.status_code == status
    if status == 429:
        assert int(response.headers["Retry-After"]) >= 1


def test_one_client_trying_many_names_is_slowed_down(app, db):
    make_user(db, "admin", "admin")
    app.config.update(LOGIN_MAX_FAILURES_PER_CLIENT=20, LOCKOUT_BASE_SECONDS=30)
    sprayer = client_at(app, A)
    statuses = [login(sprayer, f"user{i}", "Summer2026!").status_code for i in range(20)]
    assert statuses == [401] * 19 + [429]
    refused = login(sprayer, "admin")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) in range(1, 31)
    assert login(client_at(app, B), "admin").status_code == 303


def test_lockout_is_per_client_and_forgotten_after_a_quiet_spell(db):
    make_user(db, "alice", "coordinator")
    clock = Clock()
    for _ in range(3):
        with pytest.raises((accounts.BadCredentials, accounts.LockedOut)):
            auth(db, "alice", "wrong", clock, client=A)
    with pytest.raises(accounts.LockedOut):
        auth(db, "alice", PASSWORD, clock, client=A)
    assert auth(db, "alice", PASSWORD, clock, client=B).name == "alice"
    clock.now += POLICY.max_seconds + 1
    with pytest.raises(accounts.BadCredentials):
        auth(db, "alice", "wrong", clock, client=A)
    rows = db.execute("SELECT client, name, failures FROM login_attempts ORDER BY name")
    assert rows.fetchall() == [(A, accounts.ANY_NAME, 1), (A, "alice", 1)]


@pytest.mark.parametrize(("trusted", "shared"), [(True, False), (False, True)])
def test_forwarded_for_names_the_client_only_behind_a_trusted_proxy(
    make_app, tmp_path, trusted, shared
):
    app = make_app(TRUST_FORWARDED_HEADERS=trusted, LOGIN_MAX_FAILURES=2, **FAST)
    db = Database(app.config["DATABASE"])
    make_user(db, "admin", "admin")
    proxy = client_at(app, "10.0.0.2")
    for _ in range(2):
        proxy.environ_base["HTTP_X_FORWARDED_FOR"] = A
        login(proxy, "admin", "not the password")
    proxy.environ_base["HTTP_X_FORWARDED_FOR"] = B
    assert (login(proxy, "admin").status_code == 429) is shared


@pytest.mark.parametrize(
    ("name", "password"),
    [("a" * 500_000, PASSWORD), ("admin", "p" * 1025), ("two words", PASSWORD)],
)
def test_impossible_login_fields_are_400_and_nothing_is_stored(app, db, name, password):
    make_user(db, "admin", "admin")
    response = login(client_at(app, A), name, password)
    assert response.status_code == 400
    assert db.execute("SELECT count(*) FROM login_attempts").fetchone()[0] == 0
    assert db.execute("SELECT max(length(name)) FROM users").fetchone()[0] == 5


def test_logout_ends_the_session_for_a_copied_cookie(app, db):
    make_user(db, "alice", "coordinator")
    browser = app.test_client()
    assert login(browser, "alice").status_code == 303
    copy = app.test_client()
    cookie = browser.get_cookie("session")
    copy.set_cookie("session", cookie.value)
    assert copy.get("/console/").status_code == 200
    browser.post("/console/logout", data={"csrf_token": csrf_token(browser, "/console/")})
    assert copy.get("/console/").status_code == 302


def _change(client, current, new, again=None):
    """Post the change-password form."""
    data = {
        "current_password": current,
        "new_password": new,
        "new_password_again": new if again is None else again,
    }
    return post_form(client, "/console/password", data, page="/console/password")


def test_changing_the_password_logs_out_every_other_session(app, db):
    make_user(db, "alice", "coordinator")
    here, elsewhere = app.test_client(), app.test_client()
    for client in (here, elsewhere):
        assert login(client, "alice").status_code == 303
    response = _change(here, PASSWORD, "a brand new passphrase")
    assert response.status_code == 303
    assert here.get("/console/").status_code == 200
    assert elsewhere.get("/console/").status_code == 302
    assert login(app.test_client(), "alice").status_code == 401
    assert login(app.test_client(), "alice", "a brand new passphrase").status_code == 303
    actions = [e["action"] for e in db["events"].rows_where("request_id IS NULL")]
    assert "password_changed" in actions


@pytest.mark.parametrize(
    ("current", "new", "again", "says"),
    [
        ("not my password", "a brand new passphrase", None, "current password"),
        (PASSWORD, "short", None, "at least 10"),
        (PASSWORD, "n" * 1025, None, "at most 1024"),
        (PASSWORD, "a brand new passphrase", "a different one!", "not the same"),
    ],
)
def test_bad_password_changes_are_refused(app, db, current, new, again, says):
    make_user(db, "alice", "coordinator")
    client = app.test_client()
    login(client, "alice")
    response = _change(client, current, new, again)
    assert response.status_code == 400 and says in response.get_data(as_text=True)
    assert client.get("/console/").status_code == 200
    assert login(app.test_client(), "alice").status_code == 303


def test_cli_reset_password_prints_a_new_one_and_ends_sessions(app, db, runner):
    make_user(db, "alice", "coordinator")
    browser = app.test_client()
    login(browser, "alice")
    result = runner.invoke(args=["users", "reset-password", "alice"])
    assert result.exit_code == 0, result.output
    password = result.output.split("password: ")[1].strip()
    assert browser.get("/console/").status_code == 302
    assert login(app.test_client(), "alice", password).status_code == 303
    missing = runner.invoke(args=["users", "reset-password", "nobody"])
    assert missing.exit_code == 1 and "no user" in missing.output


def test_disabling_a_user_ends_their_sessions(app, db):
    make_user(db, "alice", "coordinator")
    browser = app.test_client()
    login(browser, "alice")
    accounts.set_active(db, "alice", False)
    accounts.set_active(db, "alice", True)
    assert browser.get("/console/").status_code == 302


def test_a_session_ends_after_its_lifetime_without_activity(db):
    user = make_user(db, "alice", "coordinator")
    clock = Clock()
    token = accounts.start_session(db, user["id"], client=A, lifetime=3600, clock=clock)
    clock.now += 3000
    assert accounts.principal_for_session(db, token, lifetime=3600, clock=clock).name == "alice"
    # Activity moved the end on.
    clock.now += 3000
    assert accounts.principal_for_session(db, token, lifetime=3600, clock=clock) is not None
    clock.now += 3601
    assert accounts.principal_for_session(db, token, lifetime=3600, clock=clock) is None


@pytest.mark.parametrize("lifetime", [None, 3600])
def test_the_cookie_lasts_the_session_lifetime_not_a_month(make_app, lifetime):
    app = make_app(**FAST, **({"SESSION_LIFETIME": lifetime} if lifetime else {}))
    make_user(Database(app.config["DATABASE"]), "alice", "coordinator")
    response = login(app.test_client(), "alice")
    expires = parsedate_to_datetime(response.headers["Set-Cookie"].split("Expires=")[1][:29])
    left = (expires - datetime.now(UTC)).total_seconds()
    assert abs(left - (lifetime or 8 * 3600)) < 60


@pytest.mark.parametrize(
    ("setting", "public", "scheme", "secure"),
    [
        ("auto", None, "http", False),
        ("auto", None, "https", True),
        ("auto", "https://care.example", "http", True),
        ("false", "https://care.example", "https", False),
        ("true", None, "http", True),
    ],
)
def test_cookie_is_secure_when_served_over_https(make_app, setting, public, scheme, secure):
    app = make_app(COOKIE_SECURE=setting, PUBLIC_BASE_URL=public, **FAST)
    make_user(Database(app.config["DATABASE"]), "alice", "coordinator")
    client = app.test_client()
    token = csrf_token(client)
    response = client.post(
        "/console/login",
        data={"name": "alice", "password": PASSWORD, "csrf_token": token},
        base_url=f"{scheme}://localhost",
        # Over HTTPS, Flask-WTF also wants the form to come from this site.
        headers={"Referer": f"{scheme}://localhost/console/login"},
    )
    assert response.status_code == 303
    assert ("; Secure" in response.headers["Set-Cookie"]) is secure


def test_an_admin_gives_a_user_a_new_password_shown_once(app, db):
    make_user(db, "alice", "coordinator")
    alice = app.test_client()
    login(alice, "alice")
    make_user(db, "root", "admin")
    admin = app.test_client()
    login(admin, "root")
    response = post_form(admin, "/console/users/alice/reset-password", {}, page="/console/users")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    password = re.search(r"<code>([^<]+)</code>", response.get_data(as_text=True))[1]
    assert alice.get("/console/").status_code == 302
    assert login(app.test_client(), "alice", password).status_code == 303
    assert admin.get("/console/users").status_code == 200
    reset = [e for e in db["events"].rows if e["action"] == "password_reset"]
    assert [(e["actor"], json.loads(e["detail"])) for e in reset] == [
        ("user:root", {"user": "alice"})
    ]


@pytest.mark.parametrize(
    ("role", "name", "status"), [("coordinator", "alice", 403), ("admin", "nobody", 303)]
)
def test_resetting_a_password_needs_an_admin_and_a_user(app, db, role, name, status):
    make_user(db, "alice", "coordinator")
    make_user(db, "boss", role)
    client = app.test_client()
    login(client, "boss")
    response = post_form(client, f"/console/users/{name}/reset-password", {})
    assert response.status_code == status
    assert login(app.test_client(), "alice").status_code == 303


@pytest.mark.parametrize("name", ["x" * 65, " ", "n" * 500_000])
def test_token_names_are_bounded(db, name):
    with pytest.raises(accounts.BadAccountField):
        accounts.create_token(db, name, "viewer")
    assert db.execute("SELECT count(*) FROM api_tokens").fetchone()[0] == 0


def test_parallel_wrong_guesses_each_count(app, db):
    make_user(db, "alice", "coordinator")
    roomy = accounts.LockoutPolicy(max_failures=100, client_max_failures=100)

    def guess(_):
        conn = connect(app.config["DATABASE"])
        try:
            with pytest.raises(accounts.BadCredentials):
                auth(conn, "alice", "wrong", time.time, client=A, policy=roomy)
        finally:
            conn.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(guess, range(24)))
    counts = db.execute("SELECT name, failures FROM login_attempts ORDER BY name").fetchall()
    assert counts == [(accounts.ANY_NAME, 24), ("alice", 24)]


@pytest.mark.parametrize("trusted", [True, False])
def test_a_trusted_proxy_saying_https_makes_the_cookie_secure(make_app, trusted):
    app = make_app(TRUST_FORWARDED_HEADERS=trusted, **FAST)
    make_user(Database(app.config["DATABASE"]), "alice", "coordinator")
    client = app.test_client()
    token = csrf_token(client)
    response = client.post(
        "/console/login",
        data={"name": "alice", "password": PASSWORD, "csrf_token": token},
        headers={"X-Forwarded-Proto": "https", "Referer": "https://localhost/console/login"},
    )
    assert response.status_code == 303
    assert ("; Secure" in response.headers["Set-Cookie"]) is trusted


def test_cli_refuses_an_over_long_token_name(runner, db):
    result = runner.invoke(args=["tokens", "create", "--role", "viewer", "--name", "x" * 65])
    assert result.exit_code == 1 and "1-64 characters" in result.output
    assert db.execute("SELECT count(*) FROM api_tokens").fetchone()[0] == 0


def test_a_failure_counted_a_moment_later_does_not_lock_by_itself(db):
    make_user(db, "alice", "coordinator")
    clock = Clock()
    with pytest.raises(accounts.BadCredentials):
        auth(db, "alice", "wrong", clock)
    # Another request, begun just before the one above finished, checks the lock now.
    clock.now -= 0.5
    with pytest.raises(accounts.BadCredentials):
        auth(db, "alice", "wrong", clock)
