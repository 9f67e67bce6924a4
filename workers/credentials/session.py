"""Open a session's credential doors: check the declarations, fill the headers, make the sockets
in the sandbox's door folder, and give the session one `<NAME>_URL` per service."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from routinely.routines import services as declared
from routinely.config import Settings
from workers.credentials.dial import literal_refusal
from workers.credentials.server import CredentialDoors
from workers.gateway import WITHHELD
from workers.sandbox import Sandbox
from workers.sandbox.addresses import host_addresses


class ServiceError(Exception):
    """A service cannot be opened; str() is the one line for the log (never a secret)."""


def open_services(settings: Settings, sandbox: Sandbox, declarations: Mapping[str, Any] | None,
                  secrets: Mapping[str, str], log: Callable[[str], None],
                  session_id: str = "") -> tuple[CredentialDoors | None, dict[str, str]]:
    """The running doors (None when the routine declares no service) and the session's
    variables pointing at them. `secrets`: the routine's stored values by name (the worker's
    SecretStore.for_routine). Raises ServiceError."""
    try:
        services = declared.parse(declarations)
    except ValueError as exc:
        raise ServiceError(f"routinely: {exc}") from None
    if not services:
        return None, {}
    own = host_addresses()
    headers = {}
    for service in services:
        if service.env_name in WITHHELD or service.env_name.startswith("ROUTINELY_"):
            raise ServiceError(f"routinely: service {service.name}: {service.env_name} is the service's own variable; "
                               "rename the service")
        if service.secret not in secrets:
            raise ServiceError(f"routinely: service {service.name} uses secret {service.secret}, which is not among "
                               "the routine's `secrets`")
        try:
            headers[service.name] = service.header(secrets[service.secret])
        except ValueError as exc:
            raise ServiceError(f"routinely: {exc}") from None
        host, _, port = service.host_port.rpartition(":")
        refused = literal_refusal(host, int(port), settings.services_allow_hosts, own)
        if refused:
            raise ServiceError(f"routinely: service {service.name}: {refused}")
    sockets = {s.name: str(sandbox.door_dir / f"service-{s.name}.sock") for s in services}
    doors = CredentialDoors(services, headers, sockets, settings.services_allow_hosts, own, log, session_id).start()
    env = {}
    try:
        for service in services:
            port = sandbox.add_door(f"service-{service.name}", sockets[service.name])
            env[service.env_name] = f"http://127.0.0.1:{port}"
    except BaseException:
        doors.close()
        raise
    if not sandbox.enabled:
        log("routinely: sandbox off: the service doors listen on the host's loopback, where any local process "
            "can reach them")
    log("routinely: service doors: " + ", ".join(f"{s.name} ({s.env_name} → {s.origin})" for s in services))
    return doors, env
