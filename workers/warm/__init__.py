"""Warm start: per-host mirrors of the routines' repositories and the setup cache.

In: the routine's repositories and environment, the session's workspace and push guard.
Out: the workspace with checkouts at the default branches' current heads — fresh, or a
cached setup result mounted read-only under the session's own overlay layer — and what to
run before the agent (setup or maintenance). The cache's index lives in
workers.warm.cache, which the CLI reads too.
"""
from workers.warm.start import WarmStart, sweep

__all__ = ["WarmStart", "sweep"]
