"""Recovery of missed deliveries (issue #29): GitHub faked at the HTTP layer (tests/fake_github.py
sends the deliveries, keeps its record of them and redelivers), real Redis, the real receiver,
the real scheduler process and the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from routinely.routines import catalog
from routinely.records import events
from routinely.storage import keys
from routinely.github import recovery
from routinely.github.recovery import Attempt, missed, next_cursor
from tests.fake_github import FakeGitHub
from tests.support import SECRET, fixture, free_port

PAYLOAD = fixture("pull_request.opened.json")
REPO = PAYLOAD["repository"]["full_name"]


@pytest.fixture
def github(served_app):
    fake = FakeGitHub()
    fake.hook_url, fake.hook_secret = f"{served_app}/webhooks/github", SECRET
    yield fake
    fake.close()


@pytest.fixture
def app_settings(settings, github, private_key):
    return settings.with_(github_app_id="12345", github_private_key=private_key, github_api_url=github.url)


@pytest.fixture
def routine(conn):
    catalog.apply(conn, {"accounts": [{"name": "a"}], "routines": [{
        "name": "review", "account": "a", "prompt": "p", "repositories": [REPO],
        "triggers": [{"github": {"events": ["pull_request.opened"]}}]}]}, time.time())


class Down:
    """The service stopped: GitHub's deliveries meet a port nobody listens on."""

    def __init__(self, github: FakeGitHub) -> None:
        self.github = github

    def __enter__(self) -> None:
        self.url, self.github.hook_url = self.github.hook_url, f"http://127.0.0.1:{free_port()}/webhooks/github"

    def __exit__(self, *exc) -> None:
        self.github.hook_url = self.url


def sessions_of(conn, guid):
    record = events.find(conn, guid)
    return events.to_public(record)["sessions"] if record else None


def test_missed_groups_attempts_by_guid_and_leaves_out_recorded_asked_and_pings():
    a = lambda i, guid, t, code, event="pull_request.opened": Attempt(i, guid, t, i > 10, code, event)  # noqa: E731
    found = missed([a(1, "g1", 100, 503), a(11, "g1", 200, 0),  # failed twice: the newest attempt is redelivered
                    a(2, "g2", 50, 202),  # answered but never recorded (Redis lost it)
                    a(3, "g3", 60, 0), a(12, "g3", 70, 202),  # recorded on its redelivery
                    a(4, "g4", 10, 0), a(5, "g5", 20, 0, "ping"), a(6, "g6", 30, 401)],
                   recorded={"g3"}, asked={"g4"})
    assert [(m.guid, m.redeliver_id, m.attempts) for m in found] == [("g6", 6, 1), ("g2", 2, 1), ("g1", 11, 2)]
    assert [m.reason for m in found] == ["failed (HTTP 401)", "never recorded (answered 202)", "failed (no answer)"]


def test_next_cursor_reads_the_link_header():
    link = ('<https://api.github.com/app/hook/deliveries?per_page=100&cursor=v1_99>; rel="next", '
            '<https://api.github.com/app/hook/deliveries?per_page=100>; rel="first"')
    assert next_cursor(link) == "v1_99"
    assert next_cursor('<https://x/app/hook/deliveries?per_page=2>; rel="first"') is None and next_cursor("") is None


def test_deliveries_that_failed_while_stopped_are_redelivered_once_and_recorded_ones_never(
        conn, app_settings, github, routine):
    assert recovery.recover(conn, app_settings).asked == []  # the first pass: recovery's origin is now
    up = github.send("pull_request", PAYLOAD)
    assert up["status_code"] == 202
    with Down(github):
        lost = [github.send("pull_request", PAYLOAD) for _ in range(3)]
        github.send("ping", {"zen": "ping"})  # never recorded, even when answered: not recovered
    assert all(a["status_code"] == 0 for a in lost) and all(sessions_of(conn, a["guid"]) is None for a in lost)

    done = recovery.recover(conn, app_settings, limit=2)  # at most 2 per pass: oldest first
    assert [m.guid for m in done.asked] == [a["guid"] for a in lost[:2]] and done.left == 1
    done = recovery.recover(conn, app_settings)  # the one left over, and nothing twice
    assert [m.guid for m in done.asked] == [lost[2]["guid"]]
    assert github.redeliveries() == [a["id"] for a in lost]
    for a in lost:
        assert len(sessions_of(conn, a["guid"])) == 1
        assert events.get(conn, events.find(conn, a["guid"])["id"])["recovered"] is True
    assert "recovered" not in events.get(conn, events.find(conn, up["guid"])["id"])
    assert len(sessions_of(conn, up["guid"])) == 1
    listed = {e["delivery"]: e for e in events.listing(conn)}
    assert all(listed[a["guid"]].get("recovered") for a in lost) and not listed[up["guid"]].get("recovered")

    again = recovery.recover(conn, app_settings)
    assert again.asked == [] and again.missed == []
    assert github.redeliveries() == [a["id"] for a in lost]
    assert recovery.counts(conn) == {"passes": 4, "asked": 3, "ask_failed": 0}


def test_a_guid_is_never_asked_for_twice_even_when_its_redelivery_failed_too(conn, app_settings, github, routine):
    recovery.recover(conn, app_settings)
    with Down(github):
        lost = github.send("pull_request", PAYLOAD)
        assert [m.guid for m in recovery.recover(conn, app_settings).asked] == [lost["guid"]]  # redelivered... into the outage
    assert github.redeliveries() == [lost["id"]] and sessions_of(conn, lost["guid"]) is None
    assert recovery.recover(conn, app_settings).asked == []
    assert github.redeliveries() == [lost["id"]]


def test_a_new_redis_does_not_replay_what_github_delivered_before(conn, app_settings, github, routine):
    with Down(github):
        github.send("pull_request", PAYLOAD)  # before this Redis recorded anything
    time.sleep(1.1)  # GitHub's times are whole seconds
    done = recovery.recover(conn, app_settings)
    assert done.listed == 0 and github.redeliveries() == []


def test_github_refusing_the_listing_is_one_line(conn, app_settings, github):
    github.fail[("GET", "/app/hook/deliveries")] = 401
    with pytest.raises(recovery.RecoveryError, match=r"HTTP 401.*GITHUB_APP_ID"):
        recovery.recover(conn, app_settings)


def _env(app_settings, tmp_path, **extra):
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REDIS_URL": app_settings.redis_url,
            "ROUTINELY_DATA_DIR": str(tmp_path / "data"), "GITHUB_APP_ID": app_settings.github_app_id,
            "GITHUB_PRIVATE_KEY": app_settings.github_private_key, "GITHUB_API_URL": app_settings.github_api_url,
            **extra}


def _scheduled_pass(env, conn, passes, timeout=30):
    """Run the real scheduler until it has made its pass at start; its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "cli", "scheduler"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + timeout
        while int(conn.hget(keys.RECOVERY, "passes") or 0) < passes:
            assert time.time() < end and proc.poll() is None, "the scheduler made no recovery pass"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    return err


def test_the_real_scheduler_recovers_at_start_what_failed_while_the_service_was_stopped(
        conn, app_settings, github, routine, tmp_path):
    env = _env(app_settings, tmp_path)
    up = github.send("pull_request", PAYLOAD)
    err = _scheduled_pass(env, conn, 1)
    assert "recovery" in err and github.redeliveries() == []
    with Down(github):  # the service stopped, the scheduler with it
        lost = [github.send("pull_request", PAYLOAD) for _ in range(3)]
    err = _scheduled_pass(env, conn, 2)  # started again: a pass at start
    assert github.redeliveries() == [a["id"] for a in lost]
    assert "asked 3 redeliveries" in err
    for a in lost:
        assert len(sessions_of(conn, a["guid"])) == 1 and events.get(conn, events.find(conn, a["guid"])["id"])["recovered"]
    assert len(sessions_of(conn, up["guid"])) == 1
    err = _scheduled_pass(env, conn, 3)  # a second pass asks for nothing
    assert github.redeliveries() == [a["id"] for a in lost] and "asked 0 redeliveries" in err


def test_cli_dry_run_asks_for_nothing_and_prints_the_list(conn, app_settings, github, routine, tmp_path):
    recovery.recover(conn, app_settings)
    with Down(github):
        lost = [github.send("pull_request", PAYLOAD) for _ in range(2)]
    env = _env(app_settings, tmp_path)
    cli = lambda *args: subprocess.run([sys.executable, "-m", "cli", "deliveries", "recover", *args],  # noqa: E731
                                       env=env, capture_output=True, text=True)
    dry = cli("--dry-run", "--since", "1h")
    assert dry.returncode == 0, dry.stderr
    assert all(a["guid"] in dry.stdout for a in lost) and "would ask 2 redeliveries" in dry.stdout
    assert "failed (no answer)" in dry.stdout
    assert github.redeliveries() == [] and not list(conn.scan_iter(keys.recovery_asked("*")))
    done = cli("--json")
    assert done.returncode == 0, done.stderr
    assert [m["guid"] for m in json.loads(done.stdout)["asked"]] == [a["guid"] for a in lost]
    assert github.redeliveries() == [a["id"] for a in lost]
    assert "asked 0 redeliveries" in cli().stdout
    bad = cli("--since", "4d")
    assert bad.returncode == 2 and "3 days" in bad.stderr
    no_app = subprocess.run([sys.executable, "-m", "cli", "deliveries", "recover"], capture_output=True, text=True,
                            env={k: v for k, v in env.items() if not k.startswith("GITHUB_")})
    assert no_app.returncode == 1 and "GITHUB_APP_ID" in no_app.stderr


def test_the_events_page_says_an_event_was_recovered(conn, app_settings, github, routine, client):
    recovery.recover(conn, app_settings)
    with Down(github):
        lost = github.send("pull_request", PAYLOAD)
    recovery.recover(conn, app_settings)
    page = client.get("/events").get_data(as_text=True)
    assert lost["guid"] in page and "recovered: redelivered by GitHub" in page
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'routinely_recovery_total{what="asked"} 1.0' in metrics and 'routinely_recovery_total{what="passes"} 2.0' in metrics
