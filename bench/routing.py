#!/usr/bin/env python3
"""Routing benchmark: what "who may fire" adds to a delivery, per case, in µs.

Against a throwaway redis-server: the catalog's pure match alone, then routinely.firing.gate.route
(match + chain depth + roles) for a person's PR (no Redis call at all), a /fix comment on a
trigger with roles (one GET: the cached role), and a bot's comment (one MGET: the chain
record). The role look-up at GitHub itself is not timed here: it happens once per
(repository, user) per keys.ROLE_TTL.

  python bench/routing.py [--n 20000]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from routinely.firing import gate  # noqa: E402
from routinely.storage import keys
from routinely.routines.catalog import Catalog  # noqa: E402
from routinely.config import Settings  # noqa: E402
from routinely.routine_file import parse_config  # noqa: E402
from tests.support import RedisServer, fixture  # noqa: E402

REPO = "Codertocat/Hello-World"


def timed(label: str, n: int, fn) -> None:
    for _ in range(min(n, 500)):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    print(f"{label:<58} {(time.perf_counter() - started) / n * 1e6:8.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    server = RedisServer()
    try:
        conn = redis.Redis.from_url(server.url)
        settings = Settings(redis_url=server.url, data_dir=Path("/tmp/routinely-bench"),
                            github_app_id="1", github_private_key="unused: the role is cached")
        config = parse_config({"accounts": [{"name": "a"}], "routines": [
            {"name": "review", "account": "a", "prompt": "p", "repositories": [REPO],
             "triggers": [{"github": {"events": ["pull_request.opened"],
                                      "filters": [{"field": "base_branch", "op": "equals", "value": "master"}]}}]},
            {"name": "fix", "account": "a", "prompt": "p", "repositories": [REPO],
             "triggers": [{"github": {"command": "fix", "roles": ["admin", "maintain", "write"]}}]},
            {"name": "echo", "account": "a", "prompt": "p", "repositories": [REPO],
             "triggers": [{"github": {"events": ["issue_comment.created"]}}]},
        ]}, None)
        cat = Catalog(config, 1)
        pr = fixture("pull_request.opened.json")
        fix = fixture("issue_comment.created.json")
        fix["comment"]["body"] = "/fix the login page"
        conn.set(keys.role(REPO, fix["sender"]["login"]), "admin")  # the cache a first look-up leaves
        bot = fixture("issue_comment.created.json")
        bot["sender"] = {"login": "routinely[bot]", "type": "Bot"}

        timed("pull_request.opened, catalog match only", n, lambda: cat.matches("pull_request", "opened", REPO, pr))
        timed("pull_request.opened, gate.route (person: no Redis)", n,
              lambda: gate.route(cat, conn, settings, "pull_request", "opened", REPO, pr))
        timed("issue_comment /fix with roles, catalog match only", n,
              lambda: cat.matches("issue_comment", "created", REPO, fix))
        timed("issue_comment /fix with roles, gate.route (cached role: 1 GET)", n,
              lambda: gate.route(cat, conn, settings, "issue_comment", "created", REPO, fix))
        timed("issue_comment by the App's bot, gate.route (1 MGET)", n,
              lambda: gate.route(cat, conn, settings, "issue_comment", "created", REPO, bot))
        assert gate.route(cat, conn, settings, "issue_comment", "created", REPO, fix).routines
    finally:
        server.stop()


if __name__ == "__main__":
    main()
