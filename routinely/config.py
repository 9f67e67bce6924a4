"""Configuration: the environment comes in here, once, and is checked before anything starts.

A setting that is present but wrong raises ConfigError with one line saying which and why.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlparse

from routinely.routines import limits

DEFAULT_BETAS = ("experimental-cc-routine-2026-04-01",)
MIN_ADMIN_TOKEN_CHARS = 32  # a guessable admin token opens everything: `up` makes 43 random characters


class ConfigError(Exception):
    """A setting that is present but wrong; str() is the one line to show."""


@dataclass(frozen=True)
class Settings:
    redis_url: str
    data_dir: Path
    public_url: str = "http://127.0.0.1:8000"
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_secret_previous: str | None = field(default=None, repr=False)
    github_app_id: str | None = None
    github_private_key: str | None = field(default=None, repr=False)
    github_api_url: str = "https://api.github.com"
    github_git_url: str = "https://github.com"
    agent: str = "claude"
    agent_env: tuple[str, ...] = ()
    admin_token: str | None = field(default=None, repr=False)
    keep_workspaces: bool = False
    session_users: bool = False  # each session runs as a uid of its own (from_env: on when root)
    sandbox: bool = True  # ROUTINELY_SANDBOX: off runs sessions unsandboxed (each says so)
    sandbox_paths: tuple[str, ...] = ()  # ROUTINELY_SANDBOX_PATHS: host paths mounted read-only
    session_limits: Mapping[str, int | float] = field(default_factory=dict)  # ROUTINELY_SESSION_LIMITS
    cgroups: str = "auto"  # ROUTINELY_CGROUPS: auto | v2 | v1 | off (rlimits only)
    api_betas: tuple[str, ...] = DEFAULT_BETAS
    queue_name: str = "routinely"
    shutdown_grace: float = 10.0  # seconds running sessions get when a worker is stopped
    # the model gateway: where it forwards, and the credentials it swaps in (never a session's)
    anthropic_api_url: str = "https://api.anthropic.com"
    openai_api_url: str = "https://api.openai.com"
    gemini_api_url: str = "https://generativelanguage.googleapis.com"
    anthropic_api_key: str | None = field(default=None, repr=False)
    claude_code_oauth_token: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    gemini_api_key: str | None = field(default=None, repr=False)
    prices_file: Path | None = None
    cache_max_gb: float = 20.0  # the setup cache on each worker host (least recently used evicted)
    scheduler_lease_seconds: float = 15.0  # a dead scheduler's lease passes to another after this
    max_chain_depth: int = 3  # sessions in a row that the App's own writes may start (routinely.firing.chain)
    log_max_mb: float = 16.0  # ROUTINELY_LOG_MAX_MB: one session's log in Redis (then cut, routinely.records.session_log)
    recover_minutes: float = 10.0  # ROUTINELY_RECOVER_MINUTES: between the scheduler's recovery passes (routinely.github.recovery)
    recover_max: int = 100  # ROUTINELY_RECOVER_MAX: redeliveries one recovery pass may ask GitHub for
    web_read_seconds: float = 10.0  # ROUTINELY_WEB_READ_SECONDS: a request's reads and writes must progress within (app.web_worker)
    # the secret store's key (ROUTINELY_SECRETS_KEY, else DATA_DIR/secrets_key) and the one it replaces
    secrets_key: bytes | None = field(default=None, repr=False)
    secrets_key_previous: bytes | None = field(default=None, repr=False)
    services_allow_hosts: tuple[str, ...] = ()  # ROUTINELY_SERVICES_ALLOW_HOSTS: host:port a service door may dial though private
    clock: Callable[[], float] = time.time

    @property
    def log_max_bytes(self) -> int:
        return int(self.log_max_mb * 1024 * 1024)

    @property
    def github_app(self) -> bool:
        return bool(self.github_app_id and self.github_private_key)

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        get = lambda name: (env.get(name) or "").strip() or None  # noqa: E731
        data_dir = Path(get("ROUTINELY_DATA_DIR") or default_data_dir()).expanduser()
        redis_url = get("REDIS_URL") or embedded_redis_url(data_dir)
        _check_redis_url(redis_url)
        public_url = (get("PUBLIC_URL") or _recorded_url(data_dir) or cls.public_url).rstrip("/")
        _check_http_url("PUBLIC_URL", public_url)
        api_url = (get("GITHUB_API_URL") or cls.github_api_url).rstrip("/")
        _check_http_url("GITHUB_API_URL", api_url)
        git_url = (get("GITHUB_GIT_URL") or cls.github_git_url).rstrip("/")
        if urlparse(git_url).scheme not in ("http", "https", "file"):
            raise ConfigError(f"GITHUB_GIT_URL must be an http(s):// or file:// URL, got {git_url!r}")
        app_id = get("GITHUB_APP_ID")
        if app_id is not None and not (app_id.isascii() and app_id.isdigit()):
            raise ConfigError("GITHUB_APP_ID must be the App's numeric id (see the App's settings page)")
        private_key = _private_key(get("GITHUB_PRIVATE_KEY"), get("GITHUB_PRIVATE_KEY_PATH"))
        if bool(app_id) != bool(private_key):
            raise ConfigError("set both GITHUB_APP_ID and GITHUB_PRIVATE_KEY (or _PATH), or neither")
        betas = tuple(b.strip() for b in (get("ROUTINELY_API_BETAS") or ",".join(DEFAULT_BETAS)).split(",") if b.strip())
        if not 1 <= len(betas) <= 3:
            raise ConfigError("ROUTINELY_API_BETAS lists the current beta and at most two earlier ones")
        users = (get("ROUTINELY_SESSION_USERS") or "auto").lower()
        if users not in ("auto", "on", "off"):
            raise ConfigError("ROUTINELY_SESSION_USERS takes auto, on or off")
        cache_max_gb = _seconds("ROUTINELY_CACHE_MAX_GB", get("ROUTINELY_CACHE_MAX_GB"), cls.cache_max_gb, 0.0001, 1e6, "gigabytes")
        lease = _seconds("ROUTINELY_SCHEDULER_LEASE_SECONDS", get("ROUTINELY_SCHEDULER_LEASE_SECONDS"),
                         cls.scheduler_lease_seconds, 1, 3600)
        depth = get("ROUTINELY_MAX_CHAIN_DEPTH") or str(cls.max_chain_depth)
        if not (depth.isascii() and depth.isdigit()) or not 1 <= int(depth) <= 100:
            raise ConfigError(f"ROUTINELY_MAX_CHAIN_DEPTH takes a whole number from 1 to 100, got {depth!r}")
        log_max_mb = _seconds("ROUTINELY_LOG_MAX_MB", get("ROUTINELY_LOG_MAX_MB"), cls.log_max_mb, 0.1, 4096, "megabytes")
        recover_minutes = _seconds("ROUTINELY_RECOVER_MINUTES", get("ROUTINELY_RECOVER_MINUTES"), cls.recover_minutes,
                                   1, 1440, "minutes")
        recover_max = get("ROUTINELY_RECOVER_MAX") or str(cls.recover_max)
        if not (recover_max.isascii() and recover_max.isdigit()) or not 1 <= int(recover_max) <= 10_000:
            raise ConfigError(f"ROUTINELY_RECOVER_MAX takes a whole number from 1 to 10000, got {recover_max!r}")
        web_read = _seconds("ROUTINELY_WEB_READ_SECONDS", get("ROUTINELY_WEB_READ_SECONDS"), cls.web_read_seconds, 1, 300)
        agent_env = tuple(v.strip() for v in (get("ROUTINELY_AGENT_ENV") or "").split(",") if v.strip())
        grace = _seconds("ROUTINELY_SHUTDOWN_GRACE_SECONDS", get("ROUTINELY_SHUTDOWN_GRACE_SECONDS"), cls.shutdown_grace, 0, 86_400)
        vendor_urls = {}
        for name, default in (("ANTHROPIC", cls.anthropic_api_url), ("OPENAI", cls.openai_api_url),
                              ("GEMINI", cls.gemini_api_url)):
            vendor_urls[name] = (get(f"ROUTINELY_{name}_API_URL") or default).rstrip("/")
            _check_http_url(f"ROUTINELY_{name}_API_URL", vendor_urls[name])
        prices = get("ROUTINELY_PRICES")
        if prices is not None and not Path(prices).is_file():
            raise ConfigError(f"ROUTINELY_PRICES {prices!r} is not a readable file (a YAML or JSON price table)")
        sandbox, sandbox_paths = _sandbox(get("ROUTINELY_SANDBOX"), get("ROUTINELY_SANDBOX_PATHS"))
        try:
            session_limits = limits.parse_env(get("ROUTINELY_SESSION_LIMITS"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        cgroups = (get("ROUTINELY_CGROUPS") or "auto").lower()
        if cgroups not in ("auto", "v2", "v1", "off"):
            raise ConfigError(f"ROUTINELY_CGROUPS takes auto, v2, v1 or off (rlimits only), got {cgroups!r}")
        secrets_key = _secrets_key("ROUTINELY_SECRETS_KEY", get("ROUTINELY_SECRETS_KEY"), data_dir / SECRETS_KEY_FILE)
        secrets_key_previous = _secrets_key("ROUTINELY_SECRETS_KEY_PREVIOUS", get("ROUTINELY_SECRETS_KEY_PREVIOUS"), None)
        services_allow_hosts = _host_ports("ROUTINELY_SERVICES_ALLOW_HOSTS", get("ROUTINELY_SERVICES_ALLOW_HOSTS"))
        admin_token = get("ROUTINELY_ADMIN_TOKEN")
        if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN_CHARS:
            # never echo it: say only how long it is
            raise ConfigError(f"ROUTINELY_ADMIN_TOKEN is {len(admin_token)} characters; it must be at least "
                              f"{MIN_ADMIN_TOKEN_CHARS}: make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return cls(
            redis_url=redis_url,
            data_dir=data_dir,
            public_url=public_url,
            webhook_secret=get("GITHUB_WEBHOOK_SECRET"),
            webhook_secret_previous=get("GITHUB_WEBHOOK_SECRET_PREVIOUS"),
            github_app_id=app_id,
            github_private_key=private_key,
            github_api_url=api_url,
            github_git_url=git_url,
            agent=get("ROUTINELY_AGENT") or cls.agent,
            agent_env=agent_env,
            admin_token=admin_token,
            keep_workspaces=(get("ROUTINELY_KEEP_WORKSPACES") or "").lower() in ("1", "true", "yes"),
            session_users=users == "on" or (users == "auto" and os.geteuid() == 0),
            api_betas=betas,
            shutdown_grace=grace,
            anthropic_api_url=vendor_urls["ANTHROPIC"],
            openai_api_url=vendor_urls["OPENAI"],
            gemini_api_url=vendor_urls["GEMINI"],
            anthropic_api_key=get("ANTHROPIC_API_KEY"),
            claude_code_oauth_token=get("CLAUDE_CODE_OAUTH_TOKEN"),
            openai_api_key=get("OPENAI_API_KEY"),
            gemini_api_key=get("GEMINI_API_KEY"),
            prices_file=Path(prices) if prices else None,
            cache_max_gb=cache_max_gb,
            sandbox=sandbox,
            sandbox_paths=sandbox_paths,
            session_limits=session_limits,
            cgroups=cgroups,
            scheduler_lease_seconds=lease,
            max_chain_depth=int(depth),
            log_max_mb=log_max_mb,
            recover_minutes=recover_minutes,
            recover_max=int(recover_max),
            web_read_seconds=web_read,
            secrets_key=secrets_key,
            secrets_key_previous=secrets_key_previous,
            services_allow_hosts=services_allow_hosts,
        )


SECRETS_KEY_FILE = "secrets_key"  # in the data dir, beside admin_token: made by `routinely up` (0600)
SECRETS_KEY_BYTES = 32


def decode_secrets_key(text: str) -> bytes | None:
    """32 bytes from base64 (standard or URL-safe, padding optional), or None."""
    import base64
    import binascii

    text = text.strip()
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == SECRETS_KEY_BYTES else None


def _secrets_key(name: str, value: str | None, file: Path | None) -> bytes | None:
    """The key from the variable, else from the key file when there is one. Never echoes it."""
    where = name
    if value is None and file is not None:
        try:
            value, where = file.read_text().strip() or None, str(file)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"the secrets key file {file} cannot be read: {exc.strerror}") from None
    if value is None:
        return None
    key = decode_secrets_key(value)
    if key is None:
        raise ConfigError(f"{where} must be {SECRETS_KEY_BYTES} random bytes in base64: make one with "
                          "`python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'`")
    return key


def _host_ports(name: str, raw: str | None) -> tuple[str, ...]:
    """`host:port` entries, comma-separated, lower-cased (IPv6 in brackets: `[::1]:8080`)."""
    found = []
    for entry in (e.strip().lower() for e in (raw or "").split(",")):
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        if not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"{name} lists host:port entries, comma-separated, got {entry!r}")
        found.append(f"{host}:{int(port)}")
    return tuple(found)


def _sandbox(mode: str | None, paths: str | None) -> tuple[bool, tuple[str, ...]]:
    mode = (mode or "on").lower()
    if mode not in ("on", "off"):
        raise ConfigError(f"ROUTINELY_SANDBOX takes on or off, got {mode!r}")
    listed = tuple(p.strip() for p in (paths or "").split(":") if p.strip())
    for path in listed:
        if not os.path.isabs(path):
            raise ConfigError(f"ROUTINELY_SANDBOX_PATHS lists absolute host paths (colon-separated), got {path!r}")
        if not os.path.exists(path):
            raise ConfigError(f"ROUTINELY_SANDBOX_PATHS names {path}, which does not exist")
    return mode == "on", tuple(os.path.normpath(p) for p in listed)


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/routinely"  # session users must be able to reach their workspaces
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "routinely")


def _recorded_url(data_dir: Path) -> str | None:
    """The URL `routinely up` serves on, so the CLI prints session URLs that open."""
    try:
        return (data_dir / "public_url").read_text().strip() or None
    except OSError:
        return None


def embedded_redis_url(data_dir: Path) -> str:
    """The socket of the Redis that `routinely up` starts when REDIS_URL is unset."""
    return f"unix://{data_dir / 'redis' / 'redis.sock'}"


def _redacted(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@", 1)
    return url


def _check_redis_url(url: str) -> None:
    """A REDIS_URL that cannot work is one line now, not a traceback at the first request."""
    shown = _redacted(url)
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, got {shown!r}")
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ConfigError(f"REDIS_URL {shown!r} names no socket: use unix:///path/to/redis.sock")
        return
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"REDIS_URL {shown!r} has no valid port: use redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0")
    if not parsed.hostname:
        raise ConfigError(f"REDIS_URL {shown!r} names no host: use redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0")
    db = parsed.path.strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ConfigError(f"REDIS_URL {shown!r}: the database after the host must be a number, e.g. /0")


def _seconds(name: str, raw: str | None, default: float, low: float, high: float, unit: str = "seconds") -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # NaN fails too
        raise ConfigError(f"{name} must be a number of {unit} from {low:g} to {high:g} (it is {raw!r})")
    return value


def _check_http_url(name: str, value: str) -> None:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name} must be an http(s):// URL, got {value!r}")


def _private_key(inline: str | None, path: str | None) -> str | None:
    if inline and path:
        raise ConfigError("set GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH, not both")
    if path:
        try:
            inline = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"GITHUB_PRIVATE_KEY_PATH {path!r} cannot be read: {exc.strerror}") from None
    if not inline:
        return None
    inline = inline.replace("\\n", "\n")  # keys pasted into one-line env files
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        load_pem_private_key(inline.encode(), password=None)
    except (ValueError, TypeError):
        # never echo the key: say only that it is not a usable PEM
        raise ConfigError("GITHUB_PRIVATE_KEY is not a PEM private key: download a new one from the App's settings") from None
    return inline
