"""Redis: the connection, the hot path's wire, every key, RQ's formats, ids."""
