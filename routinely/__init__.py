"""Routinely's shared domain: configuration, Redis keys, routines, admission, sessions.

`app/` (the HTTP edge) and `workers/` (RQ side) both import from here; nothing here
imports Flask.
"""
