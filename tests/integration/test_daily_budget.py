"""An account's daily_budget_usd: its model spend today (metered by the gateway, in the
account's timezone) past the budget drops new firings with reason daily_budget — decided
like every other limit, inside the start script (its place in the rule: tests/test_start_plan.py),
recorded like every other drop."""
from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from routinely.routines import api_tokens, catalog
from routinely.storage import keys
from routinely.records import model_usage
from routinely.records.routines_view import listing
from tests.support import fire, redis_snapshot


def spend(conn, usd: float, tz: str = "Asia/Tokyo") -> None:
    model_usage.record(conn, "session_x", "ops/alerts", "ops", tz, time.time(), model_usage.empty(), "m",
                       {"output_tokens": 1}, usd)


def test_an_account_past_its_daily_budget_drops_the_next_firing(client, conn, settings):
    catalog.apply(conn, {"accounts": [{"name": "ops", "plan": "enterprise", "timezone": "Asia/Tokyo",
                                       "daily_budget_usd": 1.0}],
                         "routines": [{"name": "alerts", "account": "ops", "prompt": "p", "triggers": [{"api": {}}]}]},
                  time.time())
    trigger, token = api_tokens.create(conn, catalog.load(conn).find("alerts"))
    spend(conn, 0.6)
    assert fire(client, trigger, token).status_code == 200  # under the budget
    spend(conn, 0.4)  # exactly at it: spent
    before = redis_snapshot(conn)
    resp = fire(client, trigger, token)
    assert resp.status_code == 429 and "dropped (daily_budget)" in resp.get_json()["error"]["message"]
    now = datetime.now(ZoneInfo("Asia/Tokyo"))
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() + 86_400
    assert abs(int(resp.headers["Retry-After"]) - (midnight - now.timestamp())) <= 2
    after = redis_snapshot(conn)
    # nothing made: no session, no job; only the drop and the event record
    changed = {k.decode() for k in set(after) | set(before) if after.get(k) != before.get(k)}
    assert not any(k.startswith((keys.session(""), "rq:")) for k in changed), changed
    assert int(conn.hget(keys.drops("ops/alerts"), "daily_budget")) == 1
    event = client.get("/api/events").get_json()[0]
    assert [(d["routine"], d["reason"]) for d in event["dropped"]] == [("alerts", "daily_budget")] and event["sessions"] == []
    assert listing(conn, catalog.load(conn), settings)[0]["drops"]["daily_budget"] == 1  # as /api/routines and `routinely list` show it


def test_the_budget_day_is_the_accounts_own(client, conn):
    catalog.apply(conn, {"accounts": [{"name": "ops", "plan": "enterprise", "timezone": "Asia/Tokyo",
                                       "daily_budget_usd": 1.0}],
                         "routines": [{"name": "alerts", "account": "ops", "prompt": "p", "triggers": [{"api": {}}]}]},
                  time.time())
    trigger, token = api_tokens.create(conn, catalog.load(conn).find("alerts"))
    spend(conn, 5.0, tz="Pacific/Kiritimati")  # another calendar day than Tokyo's for part of every day
    kiritimati = datetime.now(ZoneInfo("Pacific/Kiritimati")).date()
    tokyo = datetime.now(ZoneInfo("Asia/Tokyo")).date()
    expected = 429 if kiritimati == tokyo else 200
    assert fire(client, trigger, token).status_code == expected
