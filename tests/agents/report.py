"""Agent that reports what it was given: env, stdin, prompt file, workspace, .mcp.json.

Writes a JSON report to $REPORT (set through the routine's env) and exits $EXIT_CODE.
"""
import json
import os
import sys

stdin = sys.stdin.read()
root = os.path.dirname(os.path.dirname(os.environ["ROUTINELY_PROMPT_FILE"]))  # the workspace; cwd is the first checkout
print("agent: started")
print("agent: line with unicode ✓")
sys.stderr.write("agent: to stderr\n")
report = {
    "env": dict(os.environ),
    "stdin": stdin,
    "prompt_file": open(os.environ["ROUTINELY_PROMPT_FILE"]).read(),
    "cwd": os.getcwd(),
    "root": root,
    "files": sorted(os.listdir(root)),
    "mcp": json.load(open(os.path.join(root, ".mcp.json"))) if os.path.exists(os.path.join(root, ".mcp.json")) else None,
    "event": json.load(open(os.environ["ROUTINELY_EVENT_FILE"])) if os.environ.get("ROUTINELY_EVENT_FILE") else None,
    "repos": {},
}
for path in os.environ.get("ROUTINELY_REPOS", "").split():
    head = open(os.path.join(path, ".git", "HEAD")).read().strip()
    report["repos"][path] = {"head": head, "files": sorted(os.listdir(path)),
                             "config": open(os.path.join(path, ".git", "config")).read()}
with open(os.environ["REPORT"], "w") as f:
    json.dump(report, f)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
