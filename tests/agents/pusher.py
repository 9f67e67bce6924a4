"""Agent that commits and tries every way past the push guard; prints what git said."""
import os
import subprocess
import sys

repo = os.environ["ROUTINELY_REPOS"].split()[0]


def git(*args):
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    print(f"$ git {' '.join(args)} -> {done.returncode}")
    print(done.stdout + done.stderr)
    return done.returncode


def commit(name):
    with open(os.path.join(repo, name), "w") as f:
        f.write(name)
    git("add", name)
    git("commit", "-qm", name)


commit("allowed.txt")
git("push", "origin", "HEAD:refs/heads/claude/ok")
commit("plain.txt")
git("push", "origin", "HEAD:refs/heads/trunk")
git("push", "--no-verify", "origin", "HEAD:refs/heads/trunk")
subprocess.run(["rm", "-rf", os.path.join(repo, ".git", "hooks")])
git("push", "--no-verify", "origin", "HEAD:refs/heads/trunk")
git("config", "core.hooksPath", "/dev/null")
git("push", "origin", "HEAD:refs/heads/other")
git("tag", "v9")
git("push", "origin", "v9")
# the relay's own hooks: the worker still refuses to forward
relay = subprocess.run(["git", "remote", "get-url", "origin"], cwd=repo, capture_output=True, text=True).stdout.strip()
hook = os.path.join(relay, "hooks", "pre-receive")
if os.path.exists(hook):
    with open(hook, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
git("push", "origin", "HEAD:refs/heads/trunk")
if os.environ.get("DELETE_OK"):
    git("push", "origin", ":refs/heads/claude/ok")
sys.exit(0)
