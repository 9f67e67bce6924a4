"""The console's secrets page: write-only, like the API and the CLI."""
from __future__ import annotations

import time

from app import create_app
from routinely.routines import catalog
from routinely.storage import keys
from tests.support import ADMIN_TOKEN

VALUE = "sntrys_the-console-value-3c9e"


def test_the_page_sets_lists_and_removes_but_never_shows_a_value(settings, conn):
    client = create_app(settings.with_(secrets_key=b"k" * 32)).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ADMIN_TOKEN}"
    catalog.apply(conn, {"accounts": [{"name": "ops"}], "routines": [
        {"name": "triage", "account": "ops", "prompt": "p", "triggers": [{"api": {}}]}]}, time.time())
    page = client.get("/secrets").get_data(as_text=True)
    assert "No secrets stored." in page and "account:ops" in page and "routine:ops/triage" in page
    done = client.post("/secrets", data={"name": "SENTRY_TOKEN", "scope": "routine:ops/triage", "value": VALUE})
    assert done.status_code == 303
    page = client.get("/secrets").get_data(as_text=True)
    assert "SENTRY_TOKEN" in page and "routine:ops/triage" in page and VALUE not in page
    assert VALUE.encode() not in b"".join(conn.dump(k) or b"" for k in conn.scan_iter("*"))  # sealed at rest
    bad = client.post("/secrets", data={"name": "1bad", "scope": "account:ops", "value": VALUE})
    assert bad.status_code == 400 and VALUE not in bad.get_data(as_text=True)
    assert client.post("/secrets/remove", data={"name": "SENTRY_TOKEN", "scope": "routine:ops/triage"}).status_code == 303
    assert not conn.exists(keys.secret("routine:ops/triage", "SENTRY_TOKEN"))
