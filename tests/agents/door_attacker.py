"""Probe agent for bench/doors.py: one attack on the session's doors or walls per session,
chosen by ATTACK in the routine's env. Each attack stops by itself at a fixed size, so a
missing cap shows as a figure in the bench's table, not a lost host. Prints `DOORS {json}`
with what it saw (the bench judges by host-side figures; this is the session's view).

Run by the system python3: standard library only.

ATTACK: none | connections | long-line | log-flood | inodes | disk | gateway-paths | push-relay
  connections: DOOR (egress, gateway, github, push), CONNECTIONS (2000), HOLD_SECONDS (3)
  disk: FOLDER (workspace, home, tmp), TOTAL_MB (1024)
  inodes: FILES (200000)
  push-relay: DATA_DIR_GUESS (the host's data dir)
DELAY_SECONDS: wait this long before the attack (0).
"""
import errno
import http.client
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

MB = 1024 * 1024
found = {"attack": os.environ.get("ATTACK", "none")}


def report():
    print("DOORS " + json.dumps(found), flush=True)


def workspace():
    return os.path.dirname(os.path.dirname(os.environ["ROUTINELY_PROMPT_FILE"]))


def repo():
    return os.environ["ROUTINELY_REPOS"].split()[0]


def git(*args):
    done = subprocess.run(["git", *args], cwd=repo(), capture_output=True, text=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).strip()


def door_port(door):
    """127.0.0.1:PORT of a door, found the way an agent would find it."""
    if door == "egress":
        return urlsplit(os.environ["HTTPS_PROXY"]).port
    if door == "gateway":
        return urlsplit(os.environ["ANTHROPIC_BASE_URL"]).port
    if door == "github":
        with open(os.path.join(workspace(), ".mcp.json")) as f:
            return urlsplit(json.load(f)["mcpServers"]["github"]["url"]).port
    if door == "push":
        return urlsplit(git("remote", "get-url", "origin")[1]).port
    raise SystemExit(f"door_attacker: unknown DOOR {door!r}")


# -- 1. idle connections to a door, non-blocking, in this one thread

def connections():
    """Opened in waves (WAVE every 50 ms): a burst past the in-sandbox bridge's backlog (128)
    leaves phantom connections (SYN cookies) that never reach the door. `held`: open and
    unanswered at the end; `answered`: the door said something (a refusal) and closed."""
    door, n = os.environ["DOOR"], int(os.environ.get("CONNECTIONS", "2000"))
    hold, wave = float(os.environ.get("HOLD_SECONDS", "3")), int(os.environ.get("WAVE", "25"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    port = door_port(door)
    sel = selectors.DefaultSelector()
    state, answers = {}, {}
    began = time.monotonic()
    hold_end = None
    while hold_end is None or time.monotonic() < hold_end:
        if len(state) < n:
            for _ in range(min(wave, n - len(state))):
                s = socket.socket()
                s.setblocking(False)
                code = s.connect_ex(("127.0.0.1", port))
                if code not in (0, errno.EINPROGRESS):
                    state[s] = "failed:" + errno.errorcode.get(code, str(code))
                    s.close()
                    continue
                state[s] = "connecting"
                sel.register(s, selectors.EVENT_WRITE)
        elif hold_end is None and ("connecting" not in state.values() or time.monotonic() > began + 30):
            hold_end = time.monotonic() + hold  # all opened and connected (or given up on): hold them
        step_end = time.monotonic() + 0.05
        while (left := step_end - time.monotonic()) > 0:
            for key, _ in sel.select(timeout=left):
                settle(key.fileobj, sel, state, answers)
    counts = {}
    for s, what in state.items():
        counts[what] = counts.get(what, 0) + 1
        if what in ("held", "connecting"):
            s.close()
    found.update(door=door, port=port, counts=counts, answers=answers, seconds=round(time.monotonic() - began, 1))


def settle(s, sel, state, answers):
    """One event on one connection: connected, answered, or closed."""
    if state[s] == "connecting":
        code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not code:
            state[s] = "held"
            sel.modify(s, selectors.EVENT_READ)
            return
        state[s] = "failed:" + errno.errorcode.get(code, str(code))
    else:
        try:
            data = s.recv(512)
        except OSError as exc:
            data, state[s] = b"", "reset:" + errno.errorcode.get(exc.errno, str(exc.errno))
        if data:  # an idle client asked nothing: whatever the door says is its refusal
            first = data.split(b"\r\n", 1)[0][:40].decode("latin-1")
            answers[first] = answers.get(first, 0) + 1
            state[s] = "answered"
        elif state[s] == "held":
            state[s] = "closed"
    sel.unregister(s)
    s.close()


# -- 2, 3. the log door

def long_line():
    block = b"x" * MB
    for _ in range(300):
        sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    sys.stdout.buffer.write(b"\n")
    found["wrote_mb"] = 300


def log_flood():
    line = b"y" * (64 * 1024 - 1) + b"\n"
    for _ in range(5000):
        sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
    found["lines"] = 5000


# -- 4, 5. the walls: inodes and bytes

def inodes():
    total, made = int(os.environ.get("FILES", "200000")), 0
    root = os.path.join(workspace(), "flood")
    try:
        for i in range(total):
            if i % 1000 == 0:
                os.makedirs(os.path.join(root, f"d{i // 1000}"), exist_ok=True)
            os.close(os.open(os.path.join(root, f"d{i // 1000}", f"f{i}"), os.O_CREAT | os.O_WRONLY, 0o644))
            made += 1
            if made % 1000 == 0:
                print(f"FILES {made}", flush=True)
    except OSError as exc:
        found["error"] = errno.errorcode.get(exc.errno, str(exc.errno))
    print(f"FILES {made}", flush=True)
    found["files"] = made


def disk():
    where = os.environ["FOLDER"]
    folder = {"workspace": workspace(), "home": os.environ["HOME"], "tmp": "/tmp"}[where]
    total = int(os.environ.get("TOTAL_MB", "1024")) * MB
    block, per_file, wrote = os.urandom(MB), 64 * MB, 0  # files under the one-file limit (RLIMIT_FSIZE)
    began = time.monotonic()
    try:
        while wrote < total:
            fd = os.open(os.path.join(folder, f"fill-{wrote // per_file}"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            try:
                for _ in range(per_file // MB):
                    wrote += os.write(fd, block)
                    if wrote % (4 * MB) == 0:
                        print(f"WROTE {where} {wrote}", flush=True)
            finally:
                os.close(fd)
    except OSError as exc:
        found["error"] = errno.errorcode.get(exc.errno, str(exc.errno))
    print(f"WROTE {where} {wrote}", flush=True)
    found.update(folder=where, wrote=wrote, seconds=round(time.monotonic() - began, 2))


# -- 6. the gateway's path classes

PATHS = [("POST", "/v1/messages"), ("POST", "/v1/messages/batches"), ("GET", "/v1/files"),
         ("POST", "/v1/fine_tuning/jobs"), ("GET", "/v1/organizations/api_keys"), ("GET", "/v1/models"),
         ("GET", "/v1/%2e%2e/files"), ("POST", "/v1//messages")]


def gateway_request(method, path):
    """One request to the gateway, straight to its port (no proxy); the status, or the error's name."""
    base = urlsplit(os.environ["ANTHROPIC_BASE_URL"])
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=30)
    try:
        conn.request(method, base.path.rstrip("/") + path, body=body if method == "POST" else None,
                     headers={"x-api-key": os.environ["ANTHROPIC_API_KEY"], "content-type": "application/json",
                              "anthropic-version": "2023-06-01"})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError as exc:
        return type(exc).__name__
    finally:
        conn.close()


def gateway_paths():
    found["statuses"] = {f"{method} {path}": gateway_request(method, path) for method, path in PATHS}


# -- 7. the push relay

def push_relay():
    with open(os.path.join(repo(), "attack.txt"), "w") as f:
        f.write("attack\n")
    git("add", "attack.txt")
    git("-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm", "attack", "--no-verify")
    git("tag", "v9")
    pushes = {}
    for name, refspec in (("tag", "v9"), ("tag-ref", "HEAD:refs/tags/v10"), ("main", "HEAD:refs/heads/main"),
                          ("outside-prefix", "HEAD:refs/heads/other/x"), ("delete-main", ":refs/heads/main"),
                          ("allowed", "HEAD:refs/heads/claude/ok")):
        pushes[name] = git("push", "--no-verify", "origin", refspec)[0]
    data = os.environ.get("DATA_DIR_GUESS", "")
    relay = os.path.join(data, "relays", os.environ["ROUTINELY_SESSION_ID"], "octo__api.git")
    tries = {}
    for name, target in (("hook", os.path.join(relay, "hooks", "post-receive")), ("config", os.path.join(relay, "config"))):
        try:
            with open(target, "a") as f:
                f.write("\n[core]\n\tfsmonitor = touch /tmp/pwned\n")
            tries[name] = "written"
        except OSError as exc:
            tries[name] = type(exc).__name__
    try:
        tries["list"] = len(os.listdir(os.path.join(data, "relays")))
    except OSError as exc:
        tries["list"] = type(exc).__name__
    found.update(pushes=pushes, relay=tries)


# -- none: every door once, so the worker has loaded what a session uses before the bench measures

def none():
    found["gateway"] = gateway_request("POST", "/v1/messages")
    found["fetch"] = git("fetch", "-q", "origin")[0]
    for door in ("egress", "github"):
        try:
            with socket.create_connection(("127.0.0.1", door_port(door)), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                found[door] = s.recv(64).split(b"\r\n")[0].decode("latin-1")
        except OSError as exc:
            found[door] = type(exc).__name__


ATTACKS = {"none": none, "connections": connections, "long-line": long_line, "log-flood": log_flood,
           "inodes": inodes, "disk": disk, "gateway-paths": gateway_paths, "push-relay": push_relay}

if __name__ == "__main__":
    time.sleep(float(os.environ.get("DELAY_SECONDS", "0")))
    ATTACKS[found["attack"]]()
    report()
