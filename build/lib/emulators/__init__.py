"""Local stand-ins for the third-party APIs crmsync writes to, for tests and offline runs."""
