"""How long requests have waited, and which are overdue: targets per urgency in data.

Pure core: no Flask, no database. The targets live in ivr_flows/queue.toml.
"""

import tomllib
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

from ..queue import URGENCY_RANK

DEFAULT_PATH = Path(__file__).resolve().parent.parent.parent / "ivr_flows" / "queue.toml"


class TargetsError(ValueError):
    """queue.toml is missing an urgency's target or gives one a wrong value."""


@dataclass(frozen=True)
class Targets:
    """The longest each urgency may wait, in minutes, before it is overdue."""

    minutes: MappingProxyType

    def overdue(self, urgency, waited_minutes):
        """Return whether a request of this urgency has waited past its target."""
        return waited_minutes > self.minutes[urgency or "normal"]


@lru_cache(maxsize=4)
def load_targets(path=DEFAULT_PATH):
    """Load and check the waiting targets, once per path."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TargetsError(f"{path}: {exc}") from None
    table = data.get("targets_minutes")
    if not isinstance(table, dict) or set(table) != set(URGENCY_RANK):
        raise TargetsError(f"{path}: [targets_minutes] must give {', '.join(URGENCY_RANK)}")
    for urgency, minutes in table.items():
        if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 1:
            raise TargetsError(f"{path}: {urgency} must be a whole number of minutes, at least 1")
    return Targets(minutes=MappingProxyType(dict(table)))


def minutes_between(start, end):
    """Return whole minutes from one ISO 8601 time to another (0 if end is earlier)."""
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return max(0, int(delta.total_seconds() // 60))


def words(minutes):
    """Say a waiting time briefly: "4 min", "3 h 05 min", "2 d 4 h"."""
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {rest:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
