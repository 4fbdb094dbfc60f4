"""Accounts: argon2 passwords, lock-out with back-off, hashed API tokens and their commands."""

import click
import pytest

from app import accounts
from tests.test_console import PASSWORD, csrf_token, fast_hasher, login, make_user


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


def auth(db, name, password, clock):
    """Authenticate under the test policy and clock."""
    return accounts.authenticate(
        db, name, password, policy=POLICY, hasher=fast_hasher(), clock=clock
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
