"""Fixtures of more than one unit test module (tests/conftest.py holds the run-wide ones)."""
from __future__ import annotations

import socketserver
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support import Recorder, private_to_loopback
from workers.sandbox.egress import EgressProxy


@pytest.fixture
def upstream() -> Iterator[int]:
    """A Recorder on this process's loopback, its port: the host behind PRIVATE that the egress proxy forwards to."""
    Recorder.seen = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy_for() -> Iterator[Callable[..., tuple[EgressProxy, list[str]]]]:
    """make(network, allow, doors=None, **options) -> a started egress proxy and its log lines, reaching only PRIVATE
    (private_to_loopback): the proxy is tested in this process, without a sandbox; every one is closed after."""
    made: list[EgressProxy] = []
    folder = Path(tempfile.mkdtemp(prefix="rly-egress-test-"))

    def make(network: str, allow: list[str], doors: dict[str, Any] | None = None,
             **options: Any) -> tuple[EgressProxy, list[str]]:
        lines: list[str] = []
        proxy = EgressProxy(network, allow, lines.append, str(folder / f"{len(made)}.sock"), lambda: doors or {},
                            connect=private_to_loopback, **options)
        made.append(proxy)
        return proxy, lines

    yield make
    for proxy in made:
        proxy.close()
