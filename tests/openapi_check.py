"""Validate real responses against openapi.yaml (its schemas are JSON Schema 2020-12)."""
from __future__ import annotations


import yaml
from jsonschema import Draft202012Validator

from tests.support import ROOT_DIR


SPEC = yaml.safe_load((ROOT_DIR / "openapi.yaml").read_text())


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def check(resp, path: str, method: str = "get") -> None:
    """Assert the response's status is documented for the operation and its body fits the schema."""
    operation = SPEC["paths"][path][method]
    status = str(resp.status_code)
    assert status in operation["responses"], f"{method.upper()} {path} answered {status}, not in openapi.yaml"
    response = operation["responses"][status]
    ref = response.get("$ref")
    if ref:
        response = SPEC["components"]["responses"][ref.rsplit("/", 1)[1]]
    content = response.get("content", {})
    if "application/json" in content:
        assert resp.mimetype == "application/json"
        schema = dict(SPEC)
        schema["$ref"] = _pointer("paths", path, method, "responses", status, "content", "application/json", "schema") \
            if not ref else _pointer("components", "responses", ref.rsplit("/", 1)[1], "content", "application/json", "schema")
        Draft202012Validator(schema).validate(resp.get_json())
    elif "text/plain" in content:
        assert resp.mimetype == "text/plain"
    for header in response.get("headers", {}):
        assert header in resp.headers, f"{header} missing"


def test_the_spec_itself_is_valid_json_schema():
    for name, schema in SPEC["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
