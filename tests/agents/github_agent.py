"""Agent that uses the github connector through the `mcp` SDK's client, as a coding agent would.

It reads .mcp.json, lists the tools, then runs $PLAN: `review` (a review with an inline comment
and a summary comment on the event's PR), `all` (also a draft PR from a branch it pushes, a
label, and every refused case), `probe` (one read, and whether the internet — $OUTSIDE_URL —
answers). Writes what it saw to $REPORT; saves its token to $TOKEN_FILE and tries $OLD_TOKEN_FILE.
"""
import asyncio
import json
import os
import subprocess

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

# the agent starts in the first checkout; .mcp.json is at the workspace's root, beside .routinely/
workspace = os.path.dirname(os.path.dirname(os.environ["ROUTINELY_PROMPT_FILE"]))
entry = json.load(open(os.path.join(workspace, ".mcp.json")))["mcpServers"]["github"]
event = json.load(open(os.environ["ROUTINELY_EVENT_FILE"])) if os.environ.get("ROUTINELY_EVENT_FILE") else {}
pr = (event.get("pull_request") or {}).get("number", 1)
owner, repo = "octo", "api"
report = {"entry_url": entry["url"], "calls": [], "status": {}}


async def session(headers, steps):
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(entry["url"], http_client=http)) as client:
            report["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            for name, args in steps:
                if callable(args):
                    args = args()
                result = await client.call_tool(name, {"owner": owner, "repo": repo, **args})
                report["calls"].append({"tool": name, "error": result.is_error, "text": result.content[0].text})
                print(f"agent: {name} -> {'error' if result.is_error else 'ok'}: {result.content[0].text[:160]}")


def push(branch):
    checkout = os.environ["ROUTINELY_REPOS"].split()[0]
    with open(os.path.join(checkout, "fix.txt"), "w") as f:
        f.write("fixed\n")
    for args in (["add", "fix.txt"], ["commit", "-qm", "fix"], ["push", "-q", "origin", f"HEAD:refs/heads/{branch}"]):
        subprocess.run(["git", *args], cwd=checkout, check=True)
    return {"title": "Fix the alert", "head": branch, "base": "main", "body": "From the alert", "draft": False}


review = [
    ("get_pull_request_files", {"pull_number": pr}),
    ("create_pull_request_review", {"pull_number": pr, "event": "COMMENT", "body": "Review: one finding",
                                    "comments": [{"path": "app.py", "line": 1, "body": "Handle the error here"}]}),
    ("add_issue_comment", {"issue_number": pr, "body": "Summary: one finding, see the review"}),
]
everything = review + [
    ("create_pull_request", lambda: push("claude/fix-1")),
    ("update_issue", {"issue_number": 7, "labels": ["triaged", "bug"]}),
    # refused, each for its own reason
    ("add_issue_comment", {"repo": "elsewhere", "issue_number": 1, "body": "x"}),
    ("create_pull_request", {"title": "t", "head": "trunk", "base": "main"}),
    ("create_pull_request", {"title": "t", "head": "claude/never-pushed", "base": "main"}),
    ("create_pull_request_review", {"pull_number": pr, "event": "APPROVE", "body": "LGTM"}),
    ("create_issue", {"title": "not allowed here"}),
    ("add_issue_comment", {"issue_number": pr, "body": "one write too many"}),
]
probe = [("get_issue", {"issue_number": 7})]
plan = {"review": review, "all": everything, "probe": probe}[os.environ.get("PLAN", "review")]


def status(headers):
    try:
        return httpx2.post(entry["url"], headers={**headers, "Accept": "application/json, text/event-stream"},
                           json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10).status_code
    except httpx2.HTTPError as exc:
        return type(exc).__name__


asyncio.run(session(entry["headers"], plan))
report["status"]["none"] = status({})
report["status"]["wrong"] = status({"Authorization": "Bearer not-this-sessions-token"})
if os.environ.get("OLD_TOKEN_FILE") and os.path.exists(os.environ["OLD_TOKEN_FILE"]):
    report["status"]["finished_session"] = status({"Authorization": open(os.environ["OLD_TOKEN_FILE"]).read()})
if os.environ.get("TOKEN_FILE"):
    open(os.environ["TOKEN_FILE"], "w").write(entry["headers"]["Authorization"])
if os.environ.get("OUTSIDE_URL"):
    try:
        httpx2.get(os.environ["OUTSIDE_URL"], timeout=3, trust_env=False)
        report["outside"] = "reached"
    except httpx2.HTTPError as exc:
        report["outside"] = type(exc).__name__
json.dump(report, open(os.environ["REPORT"], "w"))
