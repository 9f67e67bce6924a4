"""`/command` words at the start of a comment: which command, and the rest of its line.

The command is a property of the comment, not of a routine: a body can start with one
word only, so every routine watching `/NAME` sees the same name and the same text.
"""
from __future__ import annotations

import re

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# leading spaces (and tabs) allowed; the word ends at a space, a line end or the end of the body
_COMMAND = re.compile(r"[ \t]*/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?=[ \t\r\n]|$)")
COMMAND_EVENTS = ("issue_comment.created", "pull_request_review_comment.created")


def parse(body: str) -> tuple[str, str] | None:
    """(name, text) of the command a comment body starts with, or None.

    `text` is the rest of the command's line, spaces trimmed: "/fix  the login\\nmore" is
    ("fix", "the login"). A body that starts with anything else (a quote, a code fence,
    other words) carries no command, wherever a `/word` appears later in it.
    """
    found = _COMMAND.match(body)
    if found is None:
        return None
    rest = body[found.end():]
    line = rest.split("\n", 1)[0]
    return found.group(1), line.strip(" \t\r")
