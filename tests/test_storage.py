"""Storage that waits and retries: concurrent writers, unwritable databases, recordings on disk."""

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app import queue
from app.db import connect, migrate

REPO = Path(__file__).resolve().parent.parent


def hammer(path, tag, rounds):
    """Create and then update requests, each update reading before it writes; return errors."""
    db = connect(path)
    errors = []
    try:
        for n in range(rounds):
            try:
                request, _ = queue.create(db, channel="kiosk", source_key=f"{tag}:{n}")
                # queue.update reads the row, then writes it and an event: a deferred
                # transaction that must upgrade from reader to writer.
                queue.update(db, request["id"], {"urgency": "high"}, actor="t", action="bump")
            except Exception as exc:  # every error is counted, none may happen
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        db.close()
    return errors


HAMMER_SCRIPT = (
    "import sys; from tests.test_storage import hammer;"
    " errors = hammer(sys.argv[1], sys.argv[2], int(sys.argv[3]));"
    " print(len(errors)); print(*errors[:3], sep='\\n')"
)


@pytest.mark.parametrize(("threads", "processes", "rounds"), [(6, 0, 40), (4, 2, 30)])
def test_concurrent_writers_wait_instead_of_failing(tmp_path, threads, processes, rounds):
    path = tmp_path / "busy.db"
    migrate(path)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER_SCRIPT, str(path), f"p{i}", str(rounds)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = [None] * threads

    def run(i):
        results[i] = hammer(path, f"t{i}", rounds)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert [e for errors in results for e in errors] == []
    assert [out.splitlines()[0] for out in outputs] == ["0"] * processes, outputs
    db = connect(path)
    assert db["requests"].count == (threads + processes) * rounds
    assert db["events"].count == 2 * (threads + processes) * rounds


# --- a database that cannot be written ----------------------------------------------------


@contextlib.contextmanager
def read_only(path):
    """Make a file or folder read-only, even for root (a read-only bind mount)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    done = subprocess.run(["mount", "--bind", path, path], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount as root: {done.stderr!r}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path, path], check=True)
        yield
    finally:
        subprocess.run(["umount", path], check=True)


def unwritable_database(tmp_path, what):
    """Return (database path, the path made read-only) for one kind of unwritable database."""
    folder = tmp_path / "db"
    folder.mkdir()
    database = folder / "carecall.db"
    if what == "file":
        migrate(database)
        # Folded back into one file, as a copied or restored database would be.
        connect(database).execute("PRAGMA journal_mode=DELETE")
        return database, database
    if what == "migrated folder":
        migrate(database)
        return database, folder
    return database, folder  # "empty folder": no database yet


def carecall_env(tmp_path, database):
    """Return an environment that points a CareCall process at database."""
    return {
        **os.environ,
        "CARECALL_DATABASE": str(database),
        "CARECALL_DATA_DIR": str(tmp_path / "data"),
        "CARECALL_SECRET_KEY": "test-secret-key-0123456789",
    }


@pytest.mark.parametrize("what", ["file", "migrated folder", "empty folder"])
@pytest.mark.parametrize("command", [["migrate"], ["serve", "--port", "0"]])
def test_unwritable_database_is_one_clear_line(tmp_path, what, command):
    database, frozen = unwritable_database(tmp_path, what)
    with read_only(frozen):
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", *command],
            cwd=REPO,
            env=carecall_env(tmp_path, database),
            capture_output=True,
            text=True,
            timeout=60,
        )
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, len(lines)) == (1, 1), done.stderr
    assert lines[0].startswith(f"Error: database {database} cannot be written: ")
