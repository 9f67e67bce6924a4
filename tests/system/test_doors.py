"""Doors: a unix socket the worker serves, reached from inside the session at 127.0.0.1:PORT."""
from __future__ import annotations

import shutil
import socketserver
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from workers.sandbox import Sandbox
from tests.support import SYSTEM_PYTHON, needs_root, run_in_sandbox


DIAL = """
import socket, sys
for port in sys.argv[1:]:
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
    s.sendall(b"hello\\n")
    print(s.makefile().readline().strip(), flush=True)
"""


class Echo:
    """A door server: answers each line with the door's name and the line."""

    def __init__(self, path: Path, name: str) -> None:
        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(f"{name}:{self.rfile.readline().decode().strip()}\n".encode())

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def environment(network: str) -> dict:
    return {"network": network, "allow_hosts": []}


def run(box: Sandbox, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    box.share(cwd, writable=True)
    return run_in_sandbox(box, argv, {"PATH": "/usr/bin:/bin"}, cwd, cwd)


@pytest.fixture
def cwd(tmp_path_factory):
    folder = Path(tempfile.mkdtemp(prefix="rly-doors-test-"))
    folder.chmod(0o777)  # a session user must be able to bind it
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("network,users,enabled", [("none", False, True), ("allowlist", False, True),
                                                   ("full", False, True), ("full", False, False),
                                                   pytest.param("none", True, True, marks=needs_root)])
def test_every_door_is_reached_at_its_port_under_every_policy(network, users, enabled, cwd):
    env = environment(network) if network != "allowlist" else {"network": network, "allow_hosts": ["example.com"]}
    box = Sandbox.open(env, "sess-doors", users, lambda line: None, enabled=enabled)
    servers = []
    try:
        assert stat.S_IMODE(box.door_dir.stat().st_mode) == 0o700
        ports = []
        for name in ("connector", "gateway"):
            path = box.door_dir / f"{name}.sock"
            servers.append(Echo(path, name))
            ports.append(box.add_door(name, str(path)))
        assert len(set(ports)) == 2
        done = run(box, [SYSTEM_PYTHON or "python3", "-c", DIAL, *map(str, ports)], cwd)
        assert done.stdout.split() == ["connector:hello", "gateway:hello"], done.stderr
    finally:
        for server in servers:
            server.close()
        door_dir = box.door_dir
        box.close()
    assert not door_dir.exists()


def test_a_door_is_added_once(tmp_path):
    box = Sandbox.open(environment("none"), "sess-twice", False, lambda line: None)
    try:
        path = box.door_dir / "x.sock"
        server = Echo(path, "x")
        box.add_door("x", str(path))
        with pytest.raises(ValueError):
            box.add_door("x", str(path))
        server.close()
    finally:
        box.close()


@needs_root
def test_the_door_folder_and_sockets_belong_to_the_session_user_alone(tmp_path):
    box = Sandbox.open(environment("none"), "sess-owner", True, lambda line: None)
    try:
        path = box.door_dir / "c.sock"
        server = Echo(path, "c")
        box.add_door("c", str(path))
        for p in (box.door_dir, path):
            assert p.stat().st_uid == box.uid
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        server.close()
    finally:
        box.close()
