"""Usage that adds up (issue #31): the model gateway's daily records (routinely.records.model_usage.record)
shown by /api/usage and /usage as tokens and dollars per day, per routine and per model, against a
real Redis; a model without a price is "unknown" with the count of its requests, never $0."""
from __future__ import annotations

import html
import re
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from routinely.routines import catalog
from routinely.storage import keys
from routinely.records import model_usage
from tests import openapi_check

TZ = "Asia/Tokyo"


def setup(conn) -> None:
    catalog.apply(conn, {"accounts": [{"name": "alice", "plan": "max", "timezone": TZ},
                                      {"name": "bob", "plan": "pro", "timezone": "UTC"}],
                         "routines": [{"name": n, "account": "alice", "prompt": "p", "triggers": [{"api": {}}]}
                                      for n in ("triage", "review")]
                         + [{"name": "triage", "account": "bob", "prompt": "p", "triggers": [{"api": {}}]}]},
                  time.time())


def meter(conn, routine: str, model: str | None, now: float, inp: int, out: int, cost: float | None,
          account: str = "alice", tz: str = TZ) -> None:
    model_usage.record(conn, "session_u", f"{account}/{routine}", account, tz, now, model_usage.empty(), model,
                       {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": 1}, cost)


def test_api_usage_sums_the_gateway_records_per_day_routine_and_model(client, conn):
    setup(conn)
    now = time.time()
    yesterday = now - 86_400
    meter(conn, "triage", "claude-sonnet", now, 100, 10, 0.25)
    meter(conn, "triage", "claude-sonnet", now, 200, 20, 0.50)
    meter(conn, "review", "gpt-5", now, 50, 5, 0.125)
    meter(conn, "review", "homebrew", yesterday, 7, 3, None)  # no price: unknown, counted
    meter(conn, "triage", "claude-sonnet", now, 1000, 1000, 9.0, account="bob", tz="UTC")  # another account
    resp = client.get("/api/usage")
    openapi_check.check(resp, "/api/usage")
    alice = next(a for a in resp.get_json() if a["account"] == "alice")
    today = datetime.fromtimestamp(now, ZoneInfo(TZ)).date()
    days = {d["date"]: d["usage"] for d in alice["model_days"]}
    assert len(alice["model_days"]) == 30 and alice["model_days"][-1]["date"] == today.isoformat()
    assert days[today.isoformat()] == {"requests": 3, "input_tokens": 350, "output_tokens": 35,
                                       "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3,
                                       "tokens": 388, "cost_usd": 0.875, "unpriced_requests": 0}
    earlier = datetime.fromtimestamp(yesterday, ZoneInfo(TZ)).date().isoformat()
    assert days[earlier]["tokens"] == 11 and days[earlier]["cost_usd"] == 0 and days[earlier]["unpriced_requests"] == 1
    total = alice["usage"]
    assert (total["requests"], total["tokens"], total["cost_usd"], total["unpriced_requests"]) == (4, 399, 0.875, 1)
    routines = {r["routine"]: r["usage"] for r in alice["by_routine"]}
    assert routines["alice/triage"]["tokens"] == 332 and routines["alice/triage"]["cost_usd"] == 0.75
    assert routines["alice/review"]["tokens"] == 67 and routines["alice/review"]["unpriced_requests"] == 1
    assert [r["routine"] for r in alice["by_routine"]] == ["alice/triage", "alice/review"]  # most dollars first
    models = {m["model"]: m["usage"] for m in alice["by_model"]}
    assert set(models) == {"claude-sonnet", "gpt-5", "homebrew"}
    assert models["claude-sonnet"]["requests"] == 2 and models["claude-sonnet"]["cost_usd"] == 0.75
    assert models["homebrew"]["cost_usd"] == 0 and models["homebrew"]["unpriced_requests"] == 1
    # the splits add up to the account's own total
    for split in (alice["by_routine"], alice["by_model"]):
        assert sum(r["usage"]["tokens"] for r in split) == total["tokens"]
        assert round(sum(r["usage"]["cost_usd"] for r in split), 9) == total["cost_usd"]
    bob = next(a for a in resp.get_json() if a["account"] == "bob")
    assert bob["usage"]["tokens"] == 2001 and [m["model"] for m in bob["by_model"]] == ["claude-sonnet"]
    assert alice["days"][-1] == {"date": today.isoformat(), "runs": 0, "metered": 0}  # the runs are as before


def test_the_per_model_hash_lives_as_long_as_the_others(conn):
    setup(conn)
    now = time.time()
    meter(conn, "triage", None, now, 1, 1, 0.01)
    day = datetime.fromtimestamp(now, ZoneInfo(TZ)).date().isoformat()
    key = keys.usage_day(model_usage.MODELS_SCOPE, "alice", day)
    assert conn.ttl(key) == conn.ttl(keys.usage_day("account", "alice", day)) > 39 * keys.DAY
    assert model_usage.split_by_model(conn.hgetall(key))[model_usage.UNKNOWN_MODEL]["requests"] == 1


def test_the_usage_page_shows_tokens_and_dollars(client, conn):
    setup(conn)
    now = time.time()
    meter(conn, "triage", "claude-sonnet", now, 1200, 300, 1.5)
    meter(conn, "review", "homebrew", now, 10, 0, None)
    page = html.unescape(client.get("/usage").data.decode())
    card = page[page.index('data-account="alice"'):page.index('data-account="bob"')]
    today = datetime.fromtimestamp(now, ZoneInfo(TZ)).date().isoformat()
    row = re.search(rf'<tr data-date="{today}">(.*?)</tr>', card, re.S).group(1)
    assert "1,512" in row and "$1.5000 + unknown" in row and "(1 unpriced request)" in row
    routine = re.search(r'<tr data-routine="alice/triage">(.*?)</tr>', card, re.S).group(1)
    assert "1,501" in routine and "$1.5000" in routine and "unknown" not in routine
    model = re.search(r'<tr data-model="homebrew">(.*?)</tr>', card, re.S).group(1)
    assert ">unknown" in model and "(1 unpriced request)" in model
    assert "No model requests metered" in page[page.index('data-account="bob"'):]


def test_days_before_the_window_are_left_out(client, conn):
    setup(conn)
    now = time.time()
    meter(conn, "triage", "m", now - 35 * 86_400, 5, 5, 1.0)
    alice = next(a for a in client.get("/api/usage").get_json() if a["account"] == "alice")
    assert alice["usage"]["requests"] == 0
    assert (datetime.fromtimestamp(now, ZoneInfo(TZ)).date() - timedelta(days=29)).isoformat() == alice["model_days"][0]["date"]
