"""The in-sandbox launcher: bridges 127.0.0.1:PORT to each of the session's doors (unix
sockets the worker serves), then runs the session's command and exits with its code.

    python3 launch.py [--door SOCKET PORT]... [--uid N --gid N] -- COMMAND...

It runs inside the session's namespaces, so it must stand alone: standard library only,
importable by the system's python3 (the session may not read the worker's interpreter).
The worker side imports `pump` and `TcpBridge` from here too: one bridge for every door.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import threading


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes; closes both."""
    def one(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    t = threading.Thread(target=one, args=(b, a), daemon=True)
    t.start()
    one(a, b)
    t.join(timeout=60)
    a.close()
    b.close()


class TcpBridge:
    """Accepts on 127.0.0.1:port (0 = any free port) and connects each client to unix_path."""

    def __init__(self, unix_path: str, port: int = 0) -> None:
        self.unix_path = unix_path
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", port))
        self._server.listen(128)
        self.port: int = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(self.unix_path)
            except OSError:
                client.close()
                upstream.close()
                continue
            threading.Thread(target=pump, args=(client, upstream), daemon=True).start()

    def close(self) -> None:
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()


def loopback_up() -> None:
    """Bring `lo` up in a namespace made by `unshare --net` (bwrap does this itself)."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0))[:18])[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--door", nargs=2, action="append", default=[], metavar=("SOCKET", "PORT"))
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        loopback_up()
    except OSError as exc:
        print(f"routinely: cannot bring up loopback in the session's network namespace: {exc}", file=sys.stderr)
    for unix_path, port in args.door:
        TcpBridge(unix_path, int(port))
    user = {"user": args.uid, "group": args.gid, "extra_groups": []} if args.uid is not None else {}
    try:
        child = subprocess.Popen(command, preexec_fn=_die_with_parent, **user)
    except OSError as exc:
        print(f"routinely: cannot start {command[0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: child.send_signal(signum))
    code = child.wait()
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
