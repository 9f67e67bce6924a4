"""Pure filter engine: payload fields, operators, filters compiled once at apply time.

No Redis, no Flask, no I/O: plain data in, booleans out.
"""
from filters.compiled import Filter, FilterError, compile_filter, compile_filters, first_failing, matches_all, wants_event
from filters.command import COMMAND_EVENTS
from filters.command import parse as parse_command
from filters.fields import AUTHOR_ASSOCIATIONS, EVENT_KINDS, FIELDS, Fields, extract_fields

__all__ = [
    "AUTHOR_ASSOCIATIONS",
    "COMMAND_EVENTS",
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
    "parse_command",
]
