"""Pure filter engine: payload fields, operators, filters compiled once at apply time.

No Redis, no Flask, no I/O: plain data in, booleans out.
"""
from filters.compiled import Filter, FilterError, compile_filter, compile_filters, first_failing, matches_all, wants_event
from filters.fields import EVENT_KINDS, FIELDS, Fields, extract_fields

__all__ = [
    "EVENT_KINDS",
    "FIELDS",
    "Filter",
    "FilterError",
    "compile_filter",
    "compile_filters",
    "Fields",
    "extract_fields",
    "matches_all",
    "first_failing",
    "wants_event",
]
