"""A session's log: lines appended as they come (a Redis stream), read whole or from a cursor.

Every stored line is one line of inert, visible text, whoever wrote it:

- Control and invisible characters are stored escaped, as Python spells them: ESC as the four
  characters `\\x1b`, CR as `\\x0d`, U+202E (a bidi override) as `\\u202e`. That is every C0
  control but tab (newline included: an entry is one line), DEL, the C1 controls, the line and
  paragraph separators, and Unicode's format characters (bidi controls, zero-width spaces and
  joiners, BOM). Backslashes are not doubled: an agent that prints a literal `\\x1b` looks the
  same as one that printed ESC, and both are harmless text.
- A line is at most MAX_LINE_BYTES of UTF-8, cut at a character boundary.
- A line that starts with `routinely:` is the service's own. The session's output never does:
  workers.process prefixes any line of it that begins with the word `routinely` (see
  `foreign`), the agent's structured events become lines starting with `agent`, and escaping
  leaves no invisible character in front that could hide either. (Letters that merely look
  alike, such as a Cyrillic о, are not caught.)

Reading escapes too (idempotent), so logs stored before these rules show the same way in
every reader: the API's plain text (GET /api/sessions/ID/log) and the session page that polls it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import redis

from routinely.storage import keys

MAX_LINES = 100_000  # the oldest lines go first past this (the outbox stops a session's log before)
LAST_ID = f"{2**64 - 1}-{2**64 - 1}"
MAX_LINE_BYTES = 16_000  # UTF-8; with Redis's entry overhead one line stays in a 16 KiB allocation
CUT = " …[line cut]"
SERVICE = "routinely:"  # what the service's own lines start with, and nothing else's
FOREIGN = "(session) "  # put before session output that would read as the service's
RESERVE_BYTES = 256 * 1024  # past a log's cap the service's own lines still get this much
RESERVE_LINES = 1_000

# Cc but tab, Cf, Zl, Zp (Unicode 14, Python 3.11's unicodedata)
_UNSAFE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f"
    "\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]")
_LOOKS_LIKE_SERVICE = re.compile(r"\s*routinely\b", re.IGNORECASE)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def clean(line: str) -> str:
    """`line` as it is stored: escaped, and at most MAX_LINE_BYTES (so cleaning twice changes nothing)."""
    line = escape(line)
    try:
        data = line.encode()
    except UnicodeEncodeError:  # lone surrogates: Redis takes UTF-8 only
        data = line.encode("utf-8", "replace")
        line = data.decode()
    if len(data) <= MAX_LINE_BYTES:
        return line
    return head(data, MAX_LINE_BYTES - len(CUT.encode())).decode() + CUT


def escape(text: str) -> str:
    """`text` with its control and invisible characters spelled out (`\\x1b`, `\\u202e`)."""
    return _UNSAFE.sub(_escaped, text)


def head(data: bytes | bytearray, size: int) -> bytes:
    """The first `size` bytes of UTF-8 `data` or fewer, ending on a character boundary."""
    end = min(size, len(data))
    if end < len(data):
        back = end
        while back > end - 4 and back > 0 and data[back] & 0xC0 == 0x80:
            back -= 1  # data[back] continues a character: cut before the character starts
        end = back if back > 0 else end
    return bytes(data[:end])


def foreign(line: str) -> str:
    """A line of a session's output as the log takes it: never passing for the service's."""
    return FOREIGN + line if _LOOKS_LIKE_SERVICE.match(line) else line


def is_service(line: str) -> bool:
    return line.startswith(SERVICE)


def stored_cost(line: str) -> int:
    """About what one stored line takes in Redis: its bytes plus the stream entry's, rounded up
    to the allocator's size class (jemalloc has four per doubling, so up to 25% more)."""
    size = len(line.encode("utf-8", "replace")) + 64
    if size <= 128:
        return (size + 15) & ~15
    step = 1 << ((size - 1).bit_length() - 3)
    return (size + step - 1) // step * step


@dataclass
class Cap:
    """How much one session may still write to its log: `max_bytes` (ROUTINELY_LOG_MAX_MB) and
    MAX_LINES. Past either, the session's output is dropped and counted; the service's own
    lines (its status, its reasons) keep a reserve, so a session's ending is always there."""

    max_bytes: int
    used: int = 0
    lines: int = 0
    cut: bool = False
    dropped_lines: int = 0
    dropped_bytes: int = 0

    def admit(self, line: str) -> list[str]:
        """What to store for `line`: itself, nothing (dropped and counted), and in front the
        notice of the cut, once."""
        service = is_service(line)
        if self.cut and not service:
            return self._drop(line)  # the common case past the cap: no cleaning, no copy
        stored = clean(line)
        cost = stored_cost(stored)
        if not self.cut and self.used + cost <= self.max_bytes and self.lines < MAX_LINES - RESERVE_LINES:
            return self._take(stored, cost)
        notice = [] if self.cut else self._cut()
        if service and self.used + cost <= self.max_bytes + RESERVE_BYTES and self.lines < MAX_LINES:
            return notice + self._take(stored, cost)
        return notice + self._drop(line)

    def summary(self, status: str, reason: str | None = None) -> str | None:
        """The last line of a cut log (None when it was not cut): what was dropped, and how the
        session ended (its reason too: the reserve may have gone before it came)."""
        if not self.cut:
            return None
        why = f" ({reason.removeprefix(SERVICE).strip()})" if reason else ""
        return (f"routinely: the log was cut at {self._size()}: {self.dropped_lines} line(s) "
                f"({self.dropped_bytes} bytes) were dropped; the session ended {status}{why}")

    def _take(self, stored: str, cost: int) -> list[str]:
        self.used += cost
        self.lines += 1
        return [stored]

    def _cut(self) -> list[str]:
        self.cut = True
        notice = (f"routinely: this log reached its cap ({self._size()}, ROUTINELY_LOG_MAX_MB, or {MAX_LINES} lines): "
                  "the session's further output is dropped and counted; the service's own lines still follow")
        return self._take(notice, stored_cost(notice))

    def _drop(self, line: str) -> list[str]:
        self.dropped_lines += 1
        self.dropped_bytes += len(line.encode("utf-8", "replace"))
        return []

    def _size(self) -> str:
        return f"{self.max_bytes / (1024 * 1024):.4g} MB"


def append(conn: redis.Redis | redis.client.Pipeline, session_id: str, line: str) -> None:
    key = keys.session_log(session_id)
    conn.xadd(key, {"l": clean(line)}, maxlen=MAX_LINES, approximate=True)
    conn.expire(key, keys.SESSION_TTL)


def read(conn: redis.Redis, session_id: str, after: str | None = None, count: int | None = None) -> tuple[list[str], str | None]:
    """Lines after the cursor `after` (all when None) and the cursor of the last line.
    `after` must be a stream id (app/params.py checks what clients send)."""
    if after == LAST_ID:
        return [], after  # nothing can follow it (and Redis refuses an exclusive range from it)
    start = f"({after}" if after else "-"
    entries = conn.xrange(keys.session_log(session_id), min=start, max="+", count=count)
    lines = [escape(fields[b"l"].decode("utf-8", "replace")) for _, fields in entries]
    cursor = entries[-1][0].decode() if entries else after
    return lines, cursor
