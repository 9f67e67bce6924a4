"""Run one command of a session (setup or agent): its own process group, output line by line,
a deadline, and a cancel check. Whatever it started is killed when it ends.

The output is the session's, so it is read in bounded pieces: a line longer than LINE_BYTES
comes as several, each but the last ending in CONTINUES, the next starting with RESUMES; at
most QUEUE_PIECES pieces wait for `on_lines` (past that the command blocks on its pipe). A
line that would read as one of the service's own is marked (routinely.records.session_log.foreign)."""
from __future__ import annotations

import ctypes
import os
import queue
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from routinely.records import session_log

GRACE_SECONDS = 5
CONTINUES = " …[continued]"
RESUMES = "…"
LINE_BYTES = session_log.MAX_LINE_BYTES - len(CONTINUES.encode()) - len(session_log.FOREIGN.encode())  # room for both marks
READ_BYTES = 65_536
QUEUE_PIECES = 64  # pieces read but not yet handed on: at most about 64 × LINE_BYTES


def _die_with_parent() -> None:
    # the command's shell dies if the worker is SIGKILLed, instead of running on unowned
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def child_setup(user: int | None, join: tuple[str, ...], limits: tuple[tuple[int, int], ...]) -> Callable[[], None]:
    """What the child does before exec, in this order: enter the session's cgroup and set its
    rlimits while still privileged, drop to `user`, then ask to die with the worker (a change of
    uid would clear that request)."""
    def setup() -> None:
        pid = str(os.getpid()).encode()
        for path in join:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        if user is not None:
            os.setgroups([])
            os.setgid(user)
            os.setuid(user)
        _die_with_parent()
    return setup


@dataclass
class Result:
    outcome: str  # exited | timed_out | canceled
    exit_code: int | None


def run(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    stdin: str,
    deadline: float,
    on_lines: Callable[[list[str]], None],
    canceled: Callable[[], bool],
    tick: Callable[[], None] = lambda: None,
    *,
    user: int | None = None,
    pass_fds: tuple[int, ...] = (),
    started: Callable[[int], None] = lambda pid: None,
    join: tuple[str, ...] = (),
    rlimits: tuple[tuple[int, int], ...] = (),
) -> Result:
    """Run `argv` until it exits, `deadline` (monotonic) passes or `canceled()` turns true.

    `on_lines` gets batches of output lines (stdout and stderr merged; long ones in pieces) as they come;
    `tick` runs about every second (heartbeats). With `user`, the command starts as that
    uid and gid (privileges dropped before exec). `pass_fds` are handed to the command and
    closed here once it has them; `started` gets its pid. `join` are cgroup.procs files the
    command enters and `rlimits` (resource, value) pairs it gets, both before it drops to `user`."""
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=child_setup(user, join, rlimits), pass_fds=pass_fds,
        )
    finally:
        for fd in pass_fds:
            os.close(fd)
    started(proc.pid)
    lines: "queue.Queue[str | None]" = queue.Queue(maxsize=QUEUE_PIECES)
    stop = threading.Event()

    def feed() -> None:
        try:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the command did not read its stdin

    def put(item: str | None) -> bool:
        while not stop.is_set():
            try:
                lines.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # run() has stopped taking output

    def read() -> None:
        for piece in pieces(proc.stdout.fileno()):
            if not put(piece):
                return
        put(None)

    threading.Thread(target=feed, daemon=True).start()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    outcome, last_tick, done_reading = "exited", 0.0, False

    def drain(wait: float = 0.0) -> bool:
        batch, finished = [], False
        while len(batch) < QUEUE_PIECES:  # the reader refills as this takes: a batch is bounded too
            try:
                item = lines.get(timeout=wait) if wait and not batch else lines.get_nowait()
            except queue.Empty:
                break
            if item is None:
                finished = True
                break
            batch.append(item)
        if batch:
            on_lines(batch)
        return finished

    try:
        while True:
            # wakes as soon as output (or the end of it) arrives; at most every 0.1 s otherwise
            done_reading = done_reading or drain(0.1)
            if done_reading and proc.poll() is not None:
                break
            now = time.monotonic()
            if now - last_tick >= 1:
                tick()
                last_tick = now
                if canceled():
                    outcome = "canceled"
                    break
            if now >= deadline:
                outcome = "timed_out"
                break
            if done_reading:
                time.sleep(0.02)  # output closed, the process not yet reaped
    except BaseException:  # on_lines or tick failed: nothing of the command outlives this
        stop.set()
        _kill_group(proc)
        proc.wait()
        raise
    _kill_group(proc)
    end = time.monotonic() + GRACE_SECONDS  # what is still in the pipe, while the reader gets it
    while not done_reading and time.monotonic() < end:
        done_reading = drain(0.1)
    stop.set()
    reader.join(timeout=1)
    code = proc.wait()
    return Result(outcome, code if outcome == "exited" else None)


def pieces(fd: int) -> Iterator[str]:
    """The lines read from `fd` until its end, in pieces of at most LINE_BYTES (cut at a
    character boundary); never more than LINE_BYTES + READ_BYTES held."""
    buf, start, resumed = bytearray(), 0, False
    while chunk := _read(fd):
        buf += chunk
        while True:
            newline = buf.find(b"\n", start)
            end = newline if newline != -1 else len(buf)
            if end - start > LINE_BYTES:
                piece = session_log.head(buf[start:start + LINE_BYTES + 4], LINE_BYTES)
                yield _text(piece, resumed) + CONTINUES
                start, resumed = start + len(piece), True
            elif newline != -1:
                yield _text(buf[start:newline].removesuffix(b"\r"), resumed)  # CRLF line ends
                start, resumed = newline + 1, False
            else:
                break
        del buf[:start]
        start = 0
    if buf:
        yield _text(buf, resumed)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, READ_BYTES)
    except OSError:
        return b""


def _text(data: bytes | bytearray, resumed: bool) -> str:
    text = bytes(data).decode("utf-8", "replace")
    return RESUMES + text if resumed else session_log.foreign(text)


def _kill_group(proc: subprocess.Popen) -> None:
    """TERM the whole group, then KILL what is left (background children included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < end:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        if proc.poll() is not None:
            # the leader is gone; give its children a moment, then stop waiting for them
            time.sleep(0.1)
        time.sleep(0.05)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
