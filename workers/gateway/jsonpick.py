"""The values at a few key paths of a JSON text fed in pieces, everything else skipped as it passes.

The gateway reads a request's `model` and output cap, and a response's usage, without holding
the whole body or building it as Python objects (a 32 MB body of `{}` would take ~20x that as
dicts). Keys are compared decoded (`"max\\u005ftokens"` is `max_tokens`); every occurrence of a
picked key is recorded (its byte span), and the last one's value is the value, as JSON parsers
keep it. The elements of a root array are read as roots (Gemini streams a JSON array).

What a text may cost is bounded: subtrees with nothing picked are skipped by one regular
expression (in C); nesting past MAX_DEPTH, or more than `max_events` structural bytes handled
one by one, stop the picker with `failed` set.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

KEY_MAX = 160  # bytes of a key as sent: a longer one, escapes and all, is none of the picked names
VALUE_MAX = 64 * 1024  # a picked value longer than this is not kept (its path lands in `overflow`)
MAX_DEPTH = 256  # the vendors refuse far shallower documents

Path = tuple[str, ...]
_OPEN, _CLOSE, _QUOTE, _COLON, _COMMA, _BACKSLASH = b"{[", b"}]", 0x22, 0x3A, 0x2C, 0x5C
_STRUCTURE = re.compile(rb'[{}\[\]",:]')
_STRING_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)  # to the closing quote, a lone last backslash, or the end


def _balanced(depth: int) -> bytes:
    """Whole values and separators nested up to `depth` deep (possessive: no backtracking state)."""
    atom = rb'[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+"'
    if depth:
        inner = _balanced(depth - 1)
        atom += rb'|\{' + inner + rb'\}|\[' + inner + rb'\]'
    return rb'(?:' + atom + rb')*+'


_SKIP = re.compile(_balanced(5), re.DOTALL)


@dataclass
class _Frame:
    kind: int  # ord("{") or ord("[")
    path: Path | None  # None: nothing below is picked
    key: str | None = None  # the key read last (objects)
    expect_key: bool = True


@dataclass
class Picker:
    paths: frozenset[Path]
    max_events: int | None = None
    values: dict[Path, Any] = field(default_factory=dict)
    spans: dict[Path, list[tuple[int, int]]] = field(default_factory=dict)  # byte offsets of each occurrence
    overflow: set[Path] = field(default_factory=set)
    root: int | None = None  # offset of the root object's "{"
    root_has_keys: bool = False
    events: int = 0  # structural bytes handled one by one: the work this text has cost
    failed: str | None = None  # why the picker stopped reading (its values are then incomplete)

    def __post_init__(self) -> None:
        self._prefixes = {p[:i] for p in self.paths for i in range(len(p) + 1)}
        self._stack: list[_Frame] = []
        self._offset = 0
        self._in_string = self._escape = False
        self._key: bytearray | None = None  # the key being read; None in a value string or past KEY_MAX
        self._capture: bytearray | None = None
        self._capture_path: Path = ()
        self._capture_level = self._capture_start = 0

    @classmethod
    def of(cls, paths: Iterable[Path], max_events: int | None = None) -> "Picker":
        return cls(frozenset(paths), max_events)

    def nested(self) -> dict[str, Any]:
        """The picked values as the JSON holds them, e.g. {"message": {"usage": {...}}}."""
        out: dict[str, Any] = {}
        for path, value in self.values.items():
            here = out
            for name in path[:-1]:
                here = here.setdefault(name, {})
            here[path[-1]] = value
        return out

    def feed(self, chunk: bytes) -> None:
        pos, end = 0, len(chunk)
        seg = 0 if self._capture is not None else None  # where this chunk's part of a capture starts
        while pos < end and self.failed is None:
            if self._in_string:
                pos = self._string(chunk, pos)
                continue
            if self._stack and self._stack[-1].path is None:  # nothing picked below: skip whole values at once
                at = _SKIP.match(chunk, pos).end()
                if at == end:
                    break
            else:
                found = _STRUCTURE.search(chunk, pos)
                if found is None:
                    break
                at = found.start()
            pos = at + 1
            self.events += 1
            if self.max_events is not None and self.events > self.max_events:
                self.failed = f"more than {self.max_events} JSON values and separators"
            seg = self._structure(chunk, chunk[at], at, seg)
        if self._capture is not None and seg is not None:
            self._add(chunk[seg:])
        self._offset += end

    def _structure(self, chunk: bytes, char: int, at: int, seg: int | None) -> int | None:
        """Handle one structural byte; returns where the capture's part of this chunk starts."""
        if char == _QUOTE:
            self._in_string = True
            top = self._stack[-1] if self._stack else None
            self._key = bytearray() if top is not None and top.kind == _OPEN[0] and top.expect_key else None
        elif char in _OPEN:
            if len(self._stack) >= MAX_DEPTH:
                self.failed = f"nested more than {MAX_DEPTH} deep"
            elif not self._stack and char == _OPEN[0] and self.root is None:
                self.root = self._offset + at
            self._stack.append(_Frame(char, self._child_path()))
        elif char == _COLON:
            return self._colon(at, seg)
        else:  # , } ]
            if self._capture is not None and len(self._stack) == self._capture_level:
                self._end_capture(chunk[seg:at], self._offset + at)
                seg = None
            if char == _COMMA:
                if self._stack and self._stack[-1].kind == _OPEN[0]:
                    self._stack[-1].expect_key, self._stack[-1].key = True, None
            elif self._stack:
                self._stack.pop()
        return seg

    def _string(self, chunk: bytes, pos: int) -> int:
        """Go through a string; returns where to go on. A key is kept (bounded) to be decoded."""
        if self._escape:
            self._escape = False
            self._keep(chunk[pos:pos + 1])
            return pos + 1
        stop = _STRING_BODY.match(chunk, pos).end()
        self._keep(chunk[pos:stop])
        if stop == len(chunk):
            return stop
        if chunk[stop] == _BACKSLASH:  # last in the chunk: the byte it escapes comes next
            self._keep(b"\\")
            self._escape = True
            return stop + 1
        self._in_string = False
        top = self._stack[-1] if self._stack else None
        if top is not None and top.kind == _OPEN[0] and top.expect_key:  # the string was a key
            top.key = _decoded(self._key)
            self.root_has_keys = self.root_has_keys or len(self._stack) == 1
        return stop + 1

    def _keep(self, part: bytes) -> None:
        if self._key is not None:
            self._key += part
            if len(self._key) > KEY_MAX:
                self._key = None

    def _child_path(self) -> Path | None:
        if not self._stack:
            return ()
        top = self._stack[-1]
        if top.kind != _OPEN[0]:
            return () if len(self._stack) == 1 else None
        if top.path is None or top.key is None:
            return None
        path = top.path + (top.key,)
        return path if path in self._prefixes else None

    def _colon(self, at: int, seg: int | None) -> int | None:
        if not self._stack or self._stack[-1].kind != _OPEN[0]:
            return seg
        top = self._stack[-1]
        top.expect_key = False
        if self._capture is None and top.path is not None and top.key is not None:
            path = top.path + (top.key,)
            if path in self.paths:
                self._capture, self._capture_path = bytearray(), path
                self._capture_level, self._capture_start = len(self._stack), self._offset + at + 1
                return at + 1
        return seg

    def _add(self, part: bytes) -> None:
        if self._capture_path in self.overflow:
            return
        self._capture += part
        if len(self._capture) > VALUE_MAX:
            self.overflow.add(self._capture_path)
            self._capture = bytearray()

    def _end_capture(self, part: bytes, at: int) -> None:
        self._add(part)
        path, raw = self._capture_path, bytes(self._capture)
        self._capture = None
        self.spans.setdefault(path, []).append((self._capture_start, at))
        if path in self.overflow:
            return
        try:
            self.values[path] = json.loads(raw)
        except ValueError:
            self.values.pop(path, None)


def _decoded(raw: bytearray | None) -> str | None:
    if raw is None:  # longer than KEY_MAX: none of ours
        return None
    try:
        return json.loads(b'"' + bytes(raw) + b'"')
    except ValueError:
        return None


def splice(raw: bytearray, picker: Picker, changed: dict[str, Any]) -> None:
    """Set the top-level keys in `changed` in `raw` (a JSON object, edited in place: no second
    copy of a large body): every occurrence replaced, a missing key added first. Raises
    ValueError when `raw` has no root object."""
    if picker.root is None:
        raise ValueError("the request body is not a JSON object")
    edits: list[tuple[int, int, bytes]] = []
    added: list[bytes] = []
    for name, value in changed.items():
        text = json.dumps(value).encode()
        spans = picker.spans.get((name,))
        if spans:
            edits += [(start, stop, text) for start, stop in spans]
        else:
            added.append(json.dumps(name).encode() + b":" + text)
    if added:
        tail = b"," if picker.root_has_keys else b""
        edits.append((picker.root + 1, picker.root + 1, b",".join(added) + tail))
    for start, stop, text in sorted(edits, reverse=True):
        raw[start:stop] = text
