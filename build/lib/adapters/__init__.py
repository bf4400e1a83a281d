"""Adapter workers: turn commands into rate-limited, retried, idempotent API calls."""
