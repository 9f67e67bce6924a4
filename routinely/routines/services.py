"""A routine's services: the credential doors it declares, checked and named here (pure, no I/O).

    services:
      sentry: {url: "https://sentry.io", secret: SENTRY_TOKEN, header: "Authorization: Bearer {secret}",
               paths: ["/api/0/projects/"]}

The session gets `SENTRY_URL` (the service's name, upper-cased, `-` as `_`, then `_URL`) pointing
at a door the worker serves (workers/credentials/); the door forwards to `url` only, with the
header filled from the stored secret. `paths`, when given, is an allowlist of path prefixes
(relative to the door, so to `url`'s own path): `/api/0/` lets `/api/0/x` through, and `/api/0`
lets `/api/0` and `/api/0/x`, never `/api/01`.

`Service.of(name, declaration)` raises ValueError with the line to show; the routine file's
parser may call it (or `check`) to refuse a bad declaration when the file is applied.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
PLACEHOLDER = "{secret}"
MAX_PATHS = 64
# headers the door itself owns: a declaration may not set them
RESERVED_HEADERS = frozenset({"host", "connection", "content-length", "transfer-encoding", "te", "upgrade",
                              "keep-alive", "proxy-connection", "proxy-authorization", "trailer", "expect"})


@dataclass(frozen=True)
class Service:
    name: str
    url: str  # scheme://host[:port][/base], no user, query or fragment
    secret: str  # the stored secret's name
    header_name: str
    header_template: str  # the value, with {secret} where the secret goes
    paths: tuple[str, ...] = ()

    @property
    def env_name(self) -> str:
        return env_name(self.name)

    @property
    def base_path(self) -> str:
        return urlsplit(self.url).path.rstrip("/")

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def host_port(self) -> str:
        """`host:port` as ROUTINELY_SERVICES_ALLOW_HOSTS lists it (lower case; IPv6 in brackets)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{parts.port or (443 if parts.scheme == 'https' else 80)}"

    def header(self, value: str) -> tuple[str, str]:
        """The header the door adds; ValueError when the value cannot sit in a header."""
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"service {self.name}: secret {self.secret} holds a line break or NUL, "
                             "which a header cannot carry")
        return self.header_name, self.header_template.replace(PLACEHOLDER, value)

    def allows(self, path: str) -> bool:
        """Is `path` (as the session sent it, checked plain) inside the allowlist? All, without one."""
        return not self.paths or any(path == p.rstrip("/") or path.startswith(p if p.endswith("/") else p + "/")
                                     for p in self.paths)

    @classmethod
    def of(cls, name: str, declaration: Mapping[str, Any] | Any) -> "Service":
        """A declaration (a mapping in the file's shape, or a model with those attributes)."""
        decl = declaration if isinstance(declaration, Mapping) else (
            declaration.model_dump() if hasattr(declaration, "model_dump") else vars(declaration))
        where = f"service {name!r}"
        if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
            raise ValueError(f"{where}: a service's name is a-z, 0-9, - and _ (starting with a letter), at most 40")
        unknown = set(decl) - {"url", "secret", "header", "paths"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (url, secret, header, paths)")
        url, secret, header, paths = decl.get("url"), decl.get("secret"), decl.get("header"), decl.get("paths") or ()
        check_url(where, url)
        if not isinstance(secret, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", secret):
            raise ValueError(f"{where}: `secret` names a stored secret (letters, digits, _), got {secret!r}")
        header_name, header_template = check_header(where, header)
        if isinstance(paths, str) or not all(isinstance(p, str) for p in paths) or len(paths) > MAX_PATHS:
            raise ValueError(f"{where}: `paths` is a list of at most {MAX_PATHS} path prefixes")
        for path in paths:
            check_path(where, path)
        return cls(name, url.rstrip("/"), secret, header_name, header_template, tuple(paths))


def env_name(service: str) -> str:
    return service.upper().replace("-", "_") + "_URL"


def parse(declarations: Mapping[str, Any] | None) -> list[Service]:
    """Every declared service; ValueError when one is wrong or two give the session one variable."""
    services = [Service.of(name, decl) for name, decl in (declarations or {}).items()]
    seen: dict[str, str] = {}
    for s in services:
        if s.env_name in seen:
            raise ValueError(f"services {seen[s.env_name]!r} and {s.name!r} would both be {s.env_name}")
        seen[s.env_name] = s.name
    return services


def check_url(where: str, url: Any) -> None:
    if not isinstance(url, str):
        raise ValueError(f"{where}: `url` is the service's http(s):// address")
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{where}: `url` {url!r} has no valid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: `url` must be an http(s):// address with a host, got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{where}: `url` carries no user, password, query or fragment (the secret goes in `header`)")
    if parts.path and parts.path != "/":
        check_path(where, parts.path.rstrip("/"))


def check_header(where: str, header: Any) -> tuple[str, str]:
    if not isinstance(header, str) or ":" not in header:
        raise ValueError(f"{where}: `header` is 'Name: value with {PLACEHOLDER}', e.g. 'Authorization: Bearer {PLACEHOLDER}'")
    name, _, template = header.partition(":")
    name, template = name.strip(), template.strip()
    if not HEADER_NAME.fullmatch(name) or name.lower() in RESERVED_HEADERS:
        raise ValueError(f"{where}: {name[:64]!r} is not a header the door may set")
    if PLACEHOLDER not in template or any(c in template for c in "\r\n\0"):
        raise ValueError(f"{where}: the header's value must hold {PLACEHOLDER} (where the secret goes) on one line")
    return name, template


def check_path(where: str, path: str) -> None:
    if (not path.startswith("/") or "//" in path or any(c in path for c in "\\?#%") or not path.isascii()
            or any(seg in (".", "..") for seg in path.split("/")) or any(ord(c) < 0x21 for c in path)):
        raise ValueError(f"{where}: {path[:100]!r} is not a plain absolute path (no dot segments, //, %, ? or #)")
