"""Every connector call, recorded: one session log line (tool, target, outcome — never the
token or a body) and, for writes, an action on the session (routinely.records.actions)."""
from __future__ import annotations

from typing import Callable

import redis

from routinely.records import actions, sessions
from routinely.firing import chain
from routinely.secrets.redact import NOTHING, Redactor
from routinely.when import iso
from workers.connector.tools import Call


class Recorder:
    def __init__(self, conn: redis.Redis, session_id: str, log: Callable[[str], None], clock: Callable[[], float]) -> None:
        self.conn, self.session_id, self.log, self.clock = conn, session_id, log, clock
        self._depth: int | None = None
        self.redact: Redactor = NOTHING  # set by the runner: an action is stored redacted, like the log

    def __call__(self, call: Call, status: str, detail: str = "", number: int | None = None, url: str | None = None,
                 repo: str | None = None) -> None:
        """status: ok (GitHub did it), refused (policy: GitHub not called), failed (GitHub said no).
        `repo`: the routine's spelling of the repository, when it is one of the routine's."""
        number = number if number is not None else call.number
        repo = repo or f"{call.owner}/{call.repo}"
        target = repo + (f"#{number}" if number else "")
        detail = detail.removeprefix("routinely: ")
        self.log(f"routinely: github {call.tool} {target}: {status}" + (f": {detail}" if detail else ""))
        if call.write:
            actions.record(self.conn, self.session_id, self.redact.deep({
                "tool": call.tool, "repo": repo, "number": number, "url": url, "status": status, "at": iso(self.clock())}))
            if status == "ok" and number:  # the webhook this write causes starts sessions one deeper (routinely.firing.chain)
                chain.record(self.conn, repo, number, self.session_id, self.depth())
        elif status == "ok":
            actions.count_read(self.conn, self.session_id)

    def depth(self) -> int:
        """This session's chain depth, read once from its record."""
        if self._depth is None:
            session = sessions.load(self.conn, self.session_id)
            self._depth = session.chain_depth if session else chain.ROOT_DEPTH
        return self._depth
