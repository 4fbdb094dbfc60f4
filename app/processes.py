"""Whether a process on this host is still alive: for leases and spool files named by pid."""

import os
from pathlib import Path


def alive(pid):
    """Return whether process pid runs here; a zombie (killed, not yet reaped) is not alive.

    Another user's process counts as alive: it is not ours to judge. A reused id counts too.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the command name in parentheses; Z means it will do nothing more.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
