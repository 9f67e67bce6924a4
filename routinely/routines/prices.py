"""The price table: what a model's tokens cost, kept as data (prices.yaml, or the service's
own file named by ROUTINELY_PRICES) so updating a price never means changing code."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULT = Path(__file__).with_name("prices.yaml")
FIELDS = {"input": "input_tokens", "output": "output_tokens", "cache_write": "cache_creation_input_tokens",
          "cache_read": "cache_read_input_tokens"}


class PriceError(ValueError):
    """The price file cannot be used; str() says which entry and why."""


_SAME_MODEL = re.compile(r"(?:-\d{8}|-\d{4}-\d{2}-\d{2}|-latest|@[\w.-]+|\[\w+\])+")  # a date, an alias, "[1m]"


class Prices:
    def __init__(self, table: Mapping[str, Mapping[str, float]]) -> None:
        self.table = dict(table)

    @classmethod
    def load(cls, path: Path | None = None) -> "Prices":
        """Raises PriceError for a file that is missing, not YAML/JSON, or has a bad entry."""
        path = path or DEFAULT
        try:
            data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as exc:
            raise PriceError(f"ROUTINELY_PRICES {path}: cannot be read as YAML or JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PriceError(f"ROUTINELY_PRICES {path}: must map model names to {{input, output, cache_write, cache_read}}")
        for model, entry in data.items():
            if not isinstance(entry, dict) or set(entry) - set(FIELDS) or not {"input", "output"} <= set(entry) or \
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in entry.values()):
                raise PriceError(f"ROUTINELY_PRICES {path}: {model!r} needs input and output (and optionally cache_write, "
                                 "cache_read) as USD per million tokens")
        return cls(data)

    def price(self, model: str | None) -> Mapping[str, float] | None:
        """The entry of the name that `model` is, or extends only with a date, `-latest`, an `@`
        version or `[1m]`; None when it has no price. So "claude-opus-4" prices
        "claude-opus-4-20250514" but never "claude-opus-4-8" or "gpt-4.1" "gpt-4.1-mini": other
        models at other prices, shown as unknown rather than mispriced."""
        if not model:
            return None
        best = max((name for name in self.table
                    if model.startswith(name) and (len(model) == len(name) or _SAME_MODEL.fullmatch(model, len(name)))),
                   key=len, default=None)
        return self.table[best] if best else None

    def cost(self, model: str | None, tokens: Mapping[str, Any]) -> float | None:
        entry = self.price(model)
        if entry is None:
            return None
        return sum(entry.get(field, entry["input"] if field != "output" else 0) * (tokens.get(name) or 0)
                   for field, name in FIELDS.items()) / 1_000_000
