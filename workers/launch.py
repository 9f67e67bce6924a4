"""The session launcher: runs inside the session's network namespace (as root, trusted code),
brings loopback up, bridges 127.0.0.1:PORT to the egress proxy when there is one, then runs
the command as the session's user and exits with its code.

  python -m workers.launch [--bridge SOCKET PORT] [--uid N --gid N] -- COMMAND...
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

from workers.egress import _pump


def loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0))[:18])[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def bridge(unix_path: str, port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)

    def serve() -> None:
        while True:
            client, _ = server.accept()
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(unix_path)
            except OSError:
                client.close()
                continue
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bridge", nargs=2, metavar=("SOCKET", "PORT"))
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        loopback_up()
    except OSError as exc:
        print(f"routinely: cannot bring up loopback in the session's network namespace: {exc}", file=sys.stderr)
    if args.bridge:
        bridge(args.bridge[0], int(args.bridge[1]))
    user = {"user": args.uid, "group": args.gid, "extra_groups": []} if args.uid is not None else {}
    try:
        child = subprocess.Popen(command, preexec_fn=_die_with_parent, **user)
    except OSError as exc:
        print(f"routinely: cannot start {command[0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: child.send_signal(signum))
    code = child.wait()
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
