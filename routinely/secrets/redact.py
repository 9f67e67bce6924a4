"""Redaction: every value a session could see, replaced by `[secret NAME]` before anything is stored.

A Redactor is built once per session from the values it could see — the routine's stored
secrets and the session's own tokens (model gateway, github connector) — and applied to each
log line (workers.outbox), each transcript entry and each action before they reach Redis. One
compiled pattern: an alternation of the escaped values, longest first (so a value that
contains another is replaced whole), which `re` scans in one pass per line; a line with no
value in it costs that one scan.

What it does not catch, said where it matters (docs/secrets.md): values shorter than
MIN_CHARS (too many false hits, and too short to be worth stealing whole), a value printed
transformed (base64, URL-encoded, split across two lines where it had none, reversed), and a
value cut across the log's line limit (a line longer than 16,000 bytes is stored in pieces).
A multi-line value (a key) is caught line by line, and a JSON-escaped one as such.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

MIN_CHARS = 8


def shown(name: str) -> str:
    return f"[secret {name}]"


_ARMOR = re.compile(r"-----(BEGIN|END) [A-Z0-9 ]+-----")  # a PEM's armor lines: the same in every key


def _forms(value: str) -> list[str]:
    """The ways a value reaches a stored line as it is: whole, JSON-escaped (a transcript's cut
    tool input), and — for a multi-line value (a PEM or SSH key), whose lines the log stores
    one by one — each of its lines of MIN_CHARS or more but the armor."""
    forms = [value, json.dumps(value)[1:-1]]
    if "\n" in value:
        forms += [line.strip("\r") for line in value.split("\n")
                  if len(line.strip("\r")) >= MIN_CHARS and not _ARMOR.fullmatch(line.strip())]
    return list(dict.fromkeys(forms))


class Redactor:
    """Callable on a string; `deep` on JSON-shaped data (dicts, lists, strings)."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        """`values`: name -> value. Values shorter than MIN_CHARS are left alone (`skipped`
        names them, for the session log); a value given under two names shows the first."""
        self.values: dict[str, str] = {}
        self.skipped: list[str] = []
        for name, value in (values or {}).items():
            if value is None:
                continue
            if len(value) < MIN_CHARS:
                self.skipped.append(name)
            else:
                self.values.setdefault(name, value)
        self._names = {}
        for name, value in self.values.items():
            for form in _forms(value):
                self._names.setdefault(form, name)
        ordered = sorted(self._names, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def with_(self, more: Mapping[str, str]) -> "Redactor":
        """A Redactor of these values and `more` (the session's tokens, once its doors are open)."""
        return Redactor({**self.values, **{k: v for k, v in more.items() if k not in self.values}})

    def __bool__(self) -> bool:
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: shown(self._names[m.group()]), text)

    def deep(self, data: Any) -> Any:
        """`data` with every string in it (keys too) redacted; other values as they are."""
        if self._pattern is None:
            return data
        if isinstance(data, str):
            return self(data)
        if isinstance(data, dict):
            return {self(k) if isinstance(k, str) else k: self.deep(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.deep(v) for v in data]
        return data


NOTHING = Redactor()
