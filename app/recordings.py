"""Recordings on disk: written whole and synced before anyone is told they are safe."""

import errno
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path


class StorageFull(OSError):
    """The data directory has no room (or no quota) left for a recording."""


# A write that fails with these means the disk, not the recording, is the problem.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def save(data_dir, data, suffix):
    """Write a recording under data_dir atomically and durably; return its relative path."""
    day = datetime.now(UTC).strftime("%Y/%m/%d")
    relative = Path("recordings") / day / f"{uuid.uuid4().hex}{suffix}"
    target = Path(data_dir) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with open(partial, "wb") as out:
        if isinstance(data, bytes | bytearray):
            out.write(data)
        else:
            with open(data, "rb") as source:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, target)
    _fsync_dir(target.parent)
    return str(relative)


def path_of(data_dir, relative):
    """Return the absolute path of a stored recording."""
    return Path(data_dir) / relative


def _fsync_dir(path):
    """Make a rename durable by syncing its directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
