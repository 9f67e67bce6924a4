"""The in-sandbox launcher: bridges 127.0.0.1:PORT to each of the session's doors (unix
sockets the worker serves), then runs the session's command and exits with its code.

    python3 -I -S launch.py [--door SOCKET PORT]... -- COMMAND...

It runs inside the session's namespaces, so it must stand alone: standard library only,
importable by the system's python3 (the session may not read the worker's interpreter).
The worker side imports `pump` and `TcpBridge` from here too: one bridge for every door.
"""
from __future__ import annotations

import os
import signal
import socket
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

    def __init__(self, unix_path: str, port: int = 0, serve: bool = True) -> None:
        self.unix_path = unix_path
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # close-on-exec, as Python makes it
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", port))
        self._server.listen(128)
        self.port: int = self._server.getsockname()[1]
        if serve:
            self.serve()

    def serve(self) -> None:
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


def main(argv: list[str]) -> None:
    """[--door SOCKET PORT]... -- COMMAND...: listen on every door, then fork and exec the command.

    The listeners are bound before the command starts (no race with its first connection) and
    are close-on-exec, so the command holds only fds 0-2. Signals are passed on to it."""
    doors = []
    while argv and argv[0] == "--door":
        doors.append((argv[1], int(argv[2])))
        argv = argv[3:]
    command = argv[1:] if argv[:1] == ["--"] else argv
    bridges = [TcpBridge(unix_path, port, serve=False) for unix_path, port in doors]  # bwrap brought `lo` up
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"routinely: cannot start {command[0]}: {exc.strerror}", file=sys.stderr, flush=True)
            os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    for bridge in bridges:
        bridge.serve()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: os.kill(pid, signum))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main(sys.argv[1:])
