"""JSON responses, encoded with orjson (the receiver's hot path avoids jsonify)."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status=status, mimetype="application/json", headers=headers)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """One line saying what is wrong and what to do."""
    return json_response({"error": message}, status, headers)
