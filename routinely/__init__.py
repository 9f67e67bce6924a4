"""Routinely's shared domain, one package a purpose; `app/` (the HTTP edge), `workers/` (the
session side) and `cli/` import from here, and nothing here imports them (or Flask).

- `config` (Settings: the environment comes in once), `when` (the clock's ISO times),
  `disk`, `sign_in`;
- `routine_file/`: the routine file's typed models and its one-line errors;
- `routines/`: the applied catalog and what a routine declares, steering routines;
- `firing/`: from a delivery, an API call or a schedule to sessions: who may fire,
  admission and the start step (start_plan.py declares it, start.lua applies it);
- `records/`: sessions, logs, transcripts, events, refusals and the views of them;
- `storage/`: Redis — the connection, the hot path's wire, every key, RQ's formats, ids;
- `secrets/`: the sealed store and redaction;
- `github/`: installation tokens and recovery of missed deliveries.
"""
