"""Agent that probes its sandbox and prints one JSON line: what it could reach, read and do.

Run by the system python3 (the sandbox mounts /usr; session users cannot run the worker's
Python under /root). Standard library only. What to try comes from the routine's env:
PROBE_TCP / PROBE_CONNECT / PROBE_SOCKS ("host:port ..."), PROBE_URLS, PROBE_UDP,
PROBE_PATHS (paths that should be absent), PEERS_FILE, PROBE_DAEMON (a marker: start
`setsid sleep MARKER`), PROBE_SLEEP (seconds to stay alive after reporting).
"""
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request

out = {"env": dict(os.environ), "uid": os.getuid()}


def attempt(name, fn):
    try:
        out[name] = {"ok": True, "value": fn()}
    except Exception as exc:  # the probe reports, it does not judge
        out[name] = {"ok": False, "error": type(exc).__name__, "detail": str(exc)[:200]}


def split(target):
    host, port = target.rsplit(":", 1)
    return host.strip("[]"), int(port)


def talk(target):
    s = socket.create_connection(split(target), timeout=3)
    s.sendall(b"PING\r\n")
    return s.recv(64).decode(errors="replace")


def proxy_address():
    proxy = os.environ["HTTPS_PROXY"].rsplit(":", 1)
    return proxy[0].split("//")[1], int(proxy[1])


def connect(target):
    s = socket.create_connection(proxy_address(), timeout=5)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = s.recv(4096).decode()
    if " 200 " not in head.split("\r\n")[0]:
        raise PermissionError(head.split("\r\n")[0])
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\nPING\r\n")
    time.sleep(0.3)
    return s.recv(4096).decode(errors="replace").split("\r\n\r\n", 1)[-1]


def socks(target):
    host, port = split(target)
    s = socket.create_connection(proxy_address(), timeout=5)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    name = host.encode()
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack("!H", port))
    reply = s.recv(10)
    if reply[1] != 0:
        raise PermissionError(f"socks reply {reply[1]}")
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    return s.recv(4096).decode(errors="replace").split("\r\n\r\n", 1)[-1]


for kind, fn in (("tcp", talk), ("connect", connect), ("socks", socks)):
    for target in os.environ.get(f"PROBE_{kind.upper()}", "").split():
        attempt(f"{kind} {target}", lambda target=target, fn=fn: fn(target))
for url in os.environ.get("PROBE_URLS", "").split():
    attempt(f"url {url}", lambda url=url: urllib.request.urlopen(url, timeout=5).read().decode())
udp = os.environ.get("PROBE_UDP")
if udp:
    def ask():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"ping", split(udp))
        return s.recv(64).decode()
    attempt("udp", ask)
attempt("resolve", lambda: socket.getaddrinfo(os.environ.get("PROBE_NAME", "routinely-probe.test"), 443)[0][4][0])

if os.environ.get("PROBE_WALLS"):
    def processes():
        found = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    found[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    pass
        return found
    attempt("processes", processes)
    attempt("fds", lambda: sorted(int(fd) for fd in os.listdir("/proc/self/fd")))
    attempt("status", lambda: {l.split(":")[0]: l.split(":")[1].strip() for l in open("/proc/self/status")
                               if l.startswith(("Cap", "NoNewPrivs", "Seccomp"))})
    for path in os.environ.get("PROBE_PATHS", "").split():
        attempt(f"path {path}", lambda path=path: os.listdir(path) if os.path.isdir(path) else open(path).read())
    attempt("write_usr", lambda: open("/usr/routinely-probe", "w").write("x"))
    attempt("write_etc", lambda: open("/etc/routinely-probe", "w").write("x"))
    attempt("write_tmp", lambda: open("/tmp/routinely-probe", "w").write("x"))
    run = lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=10).returncode  # noqa: E731
    attempt("unshare", lambda: run(["unshare", "-Ur", "true"]))
    os.makedirs("/tmp/m", exist_ok=True)
    attempt("mount", lambda: run(["mount", "-t", "tmpfs", "none", "/tmp/m"]))
    attempt("passwd", lambda: open("/etc/passwd").read())
    attempt("cwd", os.getcwd)

peers = os.environ.get("PEERS_FILE")
if peers:
    me = os.environ["ROUTINELY_SESSION_ID"]
    with open("secret.txt", "w") as f:
        f.write("secret of " + me)
    time.sleep(2)  # both sessions are running now
    others = [p for p in open(peers).read().split() if p != me]
    root = os.path.dirname(os.getcwd())
    data = os.path.dirname(root)
    attempt("list_workspaces", lambda: os.listdir(root))
    attempt("read_other", lambda: open(os.path.join(root, others[0], "secret.txt")).read())
    attempt("write_other", lambda: open(os.path.join(root, others[0], "planted.txt"), "w").write("x"))
    attempt("list_data", lambda: sorted(os.listdir(data)))
    attempt("other_relays", lambda: os.listdir(os.path.join(data, "relays", others[0])))
    def worker_environ():
        pid = os.getppid()
        while pid > 1:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            if b"workers.worker" in cmd:  # what `routinely worker` becomes (exec)
                return open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
            pid = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("PPid:")).split()[1])
        raise LookupError("worker not found")
    attempt("worker_environ", worker_environ)

marker = os.environ.get("PROBE_DAEMON")
if marker:
    subprocess.Popen(["setsid", "sleep", marker], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.3)
    print("PROBE-DAEMON started", flush=True)
print("PROBE " + json.dumps(out), flush=True)
time.sleep(float(os.environ.get("PROBE_SLEEP", "0")))
sys.exit(0)
