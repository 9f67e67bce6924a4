"""`routinely deliver`: send a payload file to this service's webhook as GitHub would, signed
with the configured secret, to try triggers and filters without a GitHub App."""
from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from app.signature import sign
from cli.common import CliError
from routinely.config import Settings


def cmd_deliver(args, settings: Settings) -> None:
    if not settings.webhook_secret:
        raise CliError("GITHUB_WEBHOOK_SECRET is unset: set it to the secret the service runs with")
    try:
        body = Path(args.file).read_bytes()
        json.loads(body)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    except ValueError:
        raise CliError(f"{args.file} is not JSON: a webhook payload is a JSON object") from None
    url = (args.url or settings.public_url).rstrip("/") + "/webhooks/github"
    delivery = args.delivery or str(uuid.uuid4())
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/routinely-deliver",
        "X-GitHub-Event": args.event, "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(settings.webhook_secret, body)})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except OSError as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)} (is `routinely up` running? --url sets where)") from None
    print(f"{status} {delivery} {answer.decode(errors='replace').strip()}")
    if status >= 400:
        raise CliError(f"the service answered {status}: `routinely explain {delivery}` says why")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deliver", help="send a webhook payload file to this service, signed as GitHub would")
    p.add_argument("event", help="the X-GitHub-Event name, e.g. pull_request")
    p.add_argument("file", help="the payload (JSON), e.g. one saved from GitHub's delivery log")
    p.add_argument("--delivery", help="the X-GitHub-Delivery id (default a new uuid)")
    p.add_argument("--url", help="the service's base URL (default PUBLIC_URL)")
    p.set_defaults(func=cmd_deliver)
