"""Open a session's gateway: its meter, its socket in the sandbox's door folder, its variables."""
from __future__ import annotations

from typing import Any, Callable

import redis

from routinely.config import Settings
from routinely.routines.prices import Prices
from workers.gateway.meter import Budget, Meter
from workers.gateway.server import Gateway
from workers.gateway.vendors import session_env
from workers.sandbox import Sandbox


def open_gateway(settings: Settings, conn: redis.Redis, sandbox: Sandbox, session_id: str, routine_key: str,
                 account: str, timezone: str, budget: dict[str, Any] | None,
                 log: Callable[[str], None]) -> tuple[Gateway, dict[str, str]]:
    """The running gateway and the session's variables pointing at it. Raises PriceError."""
    prices = Prices.load(settings.prices_file)
    meter = Meter(conn, prices, session_id, routine_key, account, timezone, Budget(**(budget or {})), settings.clock)
    sock = str(sandbox.door_dir / "gateway.sock")
    gateway = Gateway.start(settings, meter, sock, log)
    port = sandbox.add_door("gateway", sock)
    return gateway, session_env(f"http://127.0.0.1:{port}", gateway.token)
