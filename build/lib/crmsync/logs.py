"""Structured (JSON) logs for every crmsync process, with secrets masked before they are written."""

from __future__ import annotations

import logging
import logging.config
import re
from typing import Any

__all__ = ["RedactSecrets", "configure_logging", "logging_config", "redact"]

# Credentials in URLs (scheme://user:password@host) and bearer tokens, whatever logged them.
_PATTERNS = (
    (re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),
    (re.compile(r"""(?i)(password["']?\s*[=:]\s*["']?)[^\s,}'"]+"""), r"\1***"),
)


class RedactSecrets(logging.Filter):
    """Masks credentials in the rendered message, so no handler ever sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (redacted := redact(message)) != message:
            record.msg, record.args = redacted, ()
        if record.exc_info:  # tracebacks carry exception messages, and so secrets, too
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def logging_config(level: str = "INFO", component: str = "crmsync") -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
                "static_fields": {"component": component},
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["redact"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        # One line per HTTP request is noise at INFO; failures still surface as our own logs.
        "loggers": {"httpx": {"level": "WARNING"}, "aiohttp.access": {"level": "WARNING"}},
    }


def configure_logging(level: str = "INFO", component: str = "crmsync") -> None:
    logging.config.dictConfig(logging_config(level, component))
