"""Agent that probes its sandbox and prints one JSON line: what it could reach and read.

Run by the system python3 (session users cannot run the worker's Python under /root).
"""
import json
import os
import socket
import time
import urllib.request

out = {"env": dict(os.environ), "uid": os.getuid()}


def attempt(name, fn):
    try:
        out[name] = {"ok": True, "value": fn()}
    except Exception as exc:  # the probe reports, it does not judge
        out[name] = {"ok": False, "error": type(exc).__name__}


tcp = os.environ.get("PROBE_TCP")
if tcp:
    host, port = tcp.rsplit(":", 1)
    def talk():
        s = socket.create_connection((host, int(port)), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return s.recv(64).decode()
    attempt("tcp", talk)
udp = os.environ.get("PROBE_UDP")
if udp:
    def ask():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        host, port = udp.rsplit(":", 1)
        s.sendto(b"ping", (host, int(port)))
        return s.recv(64).decode()
    attempt("udp", ask)
attempt("resolve", lambda: socket.getaddrinfo(os.environ.get("PROBE_NAME", "routinely-probe.test"), 443)[0][4][0])
for i, url in enumerate(filter(None, os.environ.get("PROBE_URLS", "").split())):
    attempt(f"url{i}", lambda url=url: urllib.request.urlopen(url, timeout=5).read().decode())
connect = os.environ.get("PROBE_CONNECT")
if connect:
    def tunnel():
        proxy = os.environ["HTTPS_PROXY"].rsplit(":", 1)
        s = socket.create_connection((proxy[0].split("//")[1], int(proxy[1])), timeout=5)
        s.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode())
        head = s.recv(4096).decode()
        if " 200 " not in head.split("\r\n")[0]:
            raise PermissionError(head.split("\r\n")[0])
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        return s.recv(4096).decode().split("\r\n\r\n", 1)[-1]
    attempt("connect", tunnel)
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
    attempt("list_data", lambda: os.listdir(data))
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
print("PROBE " + json.dumps(out), flush=True)
