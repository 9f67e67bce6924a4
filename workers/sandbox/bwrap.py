"""One session's walls as one bubblewrap argument list.

Only what is listed here is mounted (an allow list: nothing of the host is bound and then
hidden). The options travel through a memfd (`--args FD`), not the command line, so the
session's variables never show in the host's process list.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# the /etc files programs need: certificates, the dynamic linker, names of things, time zones
ETC = ("ssl", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies", "alternatives",
       "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "zoneinfo", "nsswitch.conf",
       "host.conf", "gai.conf", "protocols", "services", "mime.types", "os-release", "gitconfig",
       "bash.bashrc", "profile", "inputrc", "terminfo", "magic", "mailcap", "nanorc", "vim", "wgetrc")
ETC_GLOBS = ("python3*", "perl", "java*", "gnutls", "openssl*")
LAUNCHER_INSIDE = "/run/routinely/launch.py"
RESOLV_CONF = ("# No DNS inside a Routinely sandbox: names are resolved by the egress proxy\n"
               "# (HTTPS_PROXY/HTTP_PROXY, and ALL_PROXY=socks5h:// for other TCP).\n"
               "options timeout:1 attempts:1\n")


@dataclass
class Walls:
    """What one session sees. Paths are host paths, mounted at the same place inside."""

    uid: int
    home: Path
    cwd: Path
    writable: list[Path] = field(default_factory=list)
    readable: list[Path] = field(default_factory=list)
    tmp_bytes: int = 512 * 1024 * 1024


def memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # not close-on-exec: bwrap inherits it
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _identity(uid: int, home: Path) -> tuple[bytes, bytes]:
    users = ["root:x:0:0:root:/root:/usr/sbin/nologin"]
    groups = ["root:x:0:"]
    if uid == 0:
        users = [f"root:x:0:0:root:{home}:/bin/bash"]
    else:
        users.append(f"session:x:{uid}:{uid}:Routinely session:{home}:/bin/bash")
        groups.append(f"session:x:{uid}:")
    users.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    groups.append("nogroup:x:65534:")
    return ("\n".join(users) + "\n").encode(), ("\n".join(groups) + "\n").encode()


def arguments(walls: Walls, env: dict[str, str], launcher_source: bytes) -> tuple[list[str], list[int]]:
    """The options for bwrap, and the memfds they name (the caller passes and then closes them)."""
    fds: list[int] = []

    def data(name: str, content: bytes) -> str:
        fds.append(memfd(name, content))
        return str(fds[-1])

    args = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv", "--hostname", "routinely", "--uid", str(walls.uid), "--gid", str(walls.uid),
            "--ro-bind", "/usr", "/usr"]
    for name in TOP_LEVEL:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    etc = [Path("/etc") / name for name in ETC]
    etc += [Path(p) for pattern in ETC_GLOBS for p in sorted(glob.glob(f"/etc/{pattern}"))]
    for path in etc:
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    passwd, group = _identity(walls.uid, walls.home)
    args += ["--ro-bind-data", data("passwd", passwd), "/etc/passwd",
             "--ro-bind-data", data("group", group), "/etc/group",
             "--ro-bind-data", data("hosts", b"127.0.0.1 localhost\n::1 localhost ip6-localhost\n"), "/etc/hosts",
             "--ro-bind-data", data("resolv", RESOLV_CONF.encode()), "/etc/resolv.conf",
             "--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(walls.tmp_bytes), "--tmpfs", "/tmp"]
    for path in walls.readable:  # after /tmp: tools installed under /tmp land on the private one
        args += ["--ro-bind", str(path), str(path)]
    for path in walls.writable:
        args += ["--bind", str(path), str(path)]
    args += ["--ro-bind-data", data("launch", launcher_source), LAUNCHER_INSIDE,
             "--remount-ro", "/",  # the tree of mount points itself: nothing new at the top, in /etc, ...
             "--chdir", str(walls.cwd)]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args, fds


def command(walls: Walls, env: dict[str, str], launcher_source: bytes, binary: str, python: str,
            launcher_args: list[str], argv: list[str]) -> tuple[list[str], list[int]]:
    """The full command line: bwrap, its options in a memfd, then the launcher and `argv`."""
    args, fds = arguments(walls, env, launcher_source)
    options = memfd("bwrap-args", b"".join(a.encode() + b"\0" for a in args))
    return [binary, "--args", str(options), python, "-I", "-S", LAUNCHER_INSIDE, *launcher_args, "--", *argv], [*fds, options]
