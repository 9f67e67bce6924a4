"""Per-session resource limits (`environment.limits`, ROUTINELY_SESSION_LIMITS): names,
defaults and the one check both the routine file and the settings use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 4096
    cpus: float = 2
    pids: int = 1024
    disk_mb: int = 10240
    disk_inodes: int = 1_000_000  # files, folders and links the session may have on disk


KEYS = ("memory_mb", "cpus", "pids", "disk_mb", "disk_inodes")
FLOOR = {"memory_mb": 16, "cpus": 0.01, "pids": 8, "disk_mb": 1, "disk_inodes": 100}  # below these nothing can run at all


def check(raw: Any, where: str) -> dict[str, int | float]:
    """The given limits, validated; raises ValueError with one line naming `where` and the key."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping of {', '.join(KEYS)}")
    out: dict[str, int | float] = {}
    for key, value in raw.items():
        if key not in KEYS:
            raise ValueError(f"{where}: unknown limit {key!r} (known: {', '.join(KEYS)})")
        number = value
        if isinstance(value, str):
            try:
                number = float(value) if key == "cpus" else int(value)
            except ValueError:
                number = None
        ok_type = isinstance(number, (int, float)) and not isinstance(number, bool)
        if not ok_type or (key != "cpus" and float(number) != int(number)) or number < FLOOR[key]:
            kind = "a number" if key == "cpus" else "a whole number"
            raise ValueError(f"{where}: {key} must be {kind} of at least {FLOOR[key]}, got {value!r}")
        out[key] = float(number) if key == "cpus" else int(number)
    return out


def parse_env(text: str | None) -> dict[str, int | float]:
    """ROUTINELY_SESSION_LIMITS: `memory_mb=8192,pids=2048`. Raises ValueError."""
    pairs: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"ROUTINELY_SESSION_LIMITS takes key=value pairs such as memory_mb=8192,pids=2048, got {part.strip()!r}")
        pairs[key.strip()] = value.strip()
    return check(pairs, "ROUTINELY_SESSION_LIMITS")
