"""The one webhook signature check (X-Hub-Signature-256, HMAC-SHA256 over the raw body)."""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secrets: Iterable[str | None], body: bytes, header: str | None) -> bool:
    """True when `header` is the signature of `body` under one of `secrets` (current, then
    previous during a rotation). Compared in constant time; a missing header is False."""
    if not header or not header.startswith(PREFIX):
        return False
    given = header.encode()
    ok = False
    for secret in secrets:
        if secret:
            # evaluate every secret so timing does not reveal which one matched
            ok |= hmac.compare_digest(sign(secret, body).encode(), given)
    return ok
