"""Recordings on disk: written whole and synced before anyone is told they are safe.

A recording is first written under a temporary ``.part`` name (stage), and takes its
final name only inside the transaction that saves its request (publish), so a failed save
leaves no file and a crash leaves at most a ``.part`` that the start-up sweep removes.
"""

import contextlib
import errno
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import processes

log = logging.getLogger(__name__)

PART = ".part"
# A .part this old belongs to a process that died: uploads and saves take seconds.
PART_MAX_AGE_SECONDS = 3600
# A .part names the process writing it (upload-<pid>-..., <name>.<pid>.part): once that
# process is gone its file is removed at once, whatever its age.
WRITER = re.compile(r"^upload-(\d+)-|\.(\d+)\.part$")
# Unclaimed recordings are moved here, never deleted: one may be a senior's only message.
ORPHANS = "orphans"


class StorageFull(OSError):
    """The data directory has no room (or no quota) left for a recording."""

    def __str__(self):
        """Say what happened in words a person can be shown, without the errno."""
        return self.strerror or super().__str__()


class StorageUnavailable(StorageFull):
    """The data directory cannot be written (read-only, a file, not ours): no room at all.

    A kind of StorageFull, so every edge that keeps a recording pending for lack of room
    does the same here; the kiosk tells the two apart (507 storage_full, 503 unavailable).
    """


# A write that fails with these means the disk, not the recording, is the problem.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# ...and with these, that the data directory cannot be written at all (CARECALL_DATA_DIR):
# a read-only mount, a DATA_DIR that is a file (ENOTDIR, or EEXIST from mkdir), no rights.
UNWRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST)


@contextlib.contextmanager
def naming_full_disk():
    """Name a failed write: StorageFull for lack of room, StorageUnavailable for lack of rights."""
    try:
        yield
    except StorageFull:
        raise
    except OSError as exc:
        if exc.errno in UNWRITABLE_ERRNOS:
            log.error("data directory cannot be written: %s", exc)
            raise StorageUnavailable(
                exc.errno,
                "The data directory cannot be written (CARECALL_DATA_DIR),"
                " so this recording was not saved.",
            ) from exc
        if exc.errno not in FULL_ERRNOS:
            raise
        log.error("storage full: %s", exc)
        raise StorageFull(
            exc.errno, "There is no room left to save recordings, so this one was not saved."
        ) from exc


@dataclass(frozen=True)
class Staged:
    """A recording written in full under a temporary name, waiting for its request."""

    data_dir: Path
    relative: str
    writer: int = field(default_factory=os.getpid)

    @property
    def final(self):
        """Return the path the recording takes once published."""
        return Path(self.data_dir) / self.relative

    @property
    def partial(self):
        """Return the temporary path it is written to, naming the process that writes it."""
        return self.final.with_name(f"{self.final.name}.{self.writer}{PART}")

    def publish(self):
        """Give the recording its final name, durably; return its relative path."""
        os.replace(self.partial, self.final)
        _fsync_dir(self.final.parent)
        return self.relative

    def discard(self):
        """Delete the recording under either name: its request was never saved."""
        self.partial.unlink(missing_ok=True)
        self.final.unlink(missing_ok=True)


def stage(data_dir, data, suffix):
    """Write a recording (bytes or a file's path) in full under a temporary name; return it.

    Raises StorageFull, leaving nothing behind, when the disk or quota is full.
    """
    day = datetime.now(UTC).strftime("%Y/%m/%d")
    staged = Staged(Path(data_dir), str(Path("recordings") / day / f"{uuid.uuid4().hex}{suffix}"))
    try:
        with naming_full_disk():
            staged.final.parent.mkdir(parents=True, exist_ok=True)
            with open(staged.partial, "wb") as out:
                if isinstance(data, bytes | bytearray):
                    out.write(data)
                else:
                    with open(data, "rb") as source:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
    except BaseException:
        # Under a DATA_DIR that is a file there is no folder, and so no partial file, to remove.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            staged.partial.unlink()
        raise
    return staged


def path_of(data_dir, relative):
    """Return the absolute path of a stored recording."""
    return Path(data_dir) / relative


@dataclass(frozen=True)
class Swept:
    """What a sweep of the data directory did."""

    parts_removed: int
    orphans_moved: int

    def line(self, data_dir):
        """Describe the sweep in one line for a person starting the service."""
        return (
            f"swept {data_dir}: {self.parts_removed} unfinished file(s) removed,"
            f" {self.orphans_moved} unclaimed recording(s) moved to {Path(data_dir) / ORPHANS}"
        )


def sweep(data_dir, db, *, max_age=PART_MAX_AGE_SECONDS, now=None):
    """Remove .part files that are old or whose writer has ended; move unclaimed recordings."""
    data_dir = Path(data_dir)
    # Younger files may belong to a save still in progress in another process.
    cutoff = (time.time() if now is None else now) - max_age
    claimed = {
        path
        for row in db.execute("SELECT audio_path, video_path FROM requests")
        for path in row
        if path
    }
    parts = orphans = 0
    candidates = [
        *sorted((data_dir / "recordings").rglob("*")),
        *sorted((data_dir / "incoming").glob(f"upload-*{PART}")),
        *sorted((data_dir / "kiosk-speech").glob(f"*{PART}")),
    ]
    for path in candidates:
        relative = path.relative_to(data_dir)
        try:
            if not path.is_file():
                continue
            young = path.stat().st_mtime > cutoff
            if path.name.endswith(PART):
                if young and not writer_gone(path):
                    continue
                path.unlink()
                parts += 1
            elif young:
                continue
            elif str(relative) not in claimed:
                target = data_dir / ORPHANS / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                log.warning("recording %s has no request; moved to %s", relative, target)
                orphans += 1
        except FileNotFoundError:
            continue  # a server and a worker starting together sweep the same files
    return Swept(parts, orphans)


def writer_gone(path):
    """Return whether the process named in a .part file's name has ended (False if unnamed)."""
    found = WRITER.search(Path(path).name)
    if not found:
        return False
    pid = int(found[1] or found[2])
    return pid != os.getpid() and not processes.alive(pid)


def _fsync_dir(path):
    """Make a rename durable by syncing its directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
