"""Secrets: sealed in Redis, and redacted from everything a session leaves."""
