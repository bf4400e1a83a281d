"""Settings reject unknown CRMSYNC_* variables and never show the database password; JSON logs
mask credentials before anything is written."""

from __future__ import annotations

import json
import logging
import os
import string
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.logs import RedactSecrets, configure_logging
from crmsync.settings import ENV_PREFIX, Settings

PASSWORD = "s3cretPW-4711"
DATABASE_URL = f"postgresql://app:{PASSWORD}@db.internal:5433/crm"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# --- settings ---------------------------------------------------------------------------------


def test_defaults_load_from_a_clean_environment() -> None:
    settings = Settings()
    assert settings.embedded_database
    assert settings.dsn.startswith("postgresql://crmsync@127.0.0.1:")


def test_known_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_PARTITIONS", "8")
    assert Settings().partitions == 8


@pytest.mark.parametrize("name", ["CRMSYNC_PARTITONS", "CRMSYNC_DATABASE", "CRMSYNC_CRM_TOKENS"])
def test_unknown_crmsync_variable_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "4")
    with pytest.raises(ValueError, match=name):
        Settings()


def test_other_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNCX_WHATEVER", "1")
    monkeypatch.setenv("PGPASSWORD", "x")
    Settings()


@pytest.fixture
def remote_db(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", DATABASE_URL)
    return Settings()


def test_database_url_is_used_as_the_dsn(remote_db: Settings) -> None:
    assert not remote_db.embedded_database
    assert remote_db.dsn == DATABASE_URL


def test_repr_and_str_hide_the_database_password(remote_db: Settings) -> None:
    for text in (repr(remote_db), str(remote_db), f"{remote_db}", repr(remote_db.model_dump())):
        assert PASSWORD not in text


def test_redacted_dsn_shows_stars_not_the_password(remote_db: Settings) -> None:
    assert remote_db.dsn_redacted == "postgresql://app:***@db.internal:5433/crm"


def test_redacted_keyword_dsn_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", f"host=db user=app password={PASSWORD} dbname=crm")
    redacted = Settings().dsn_redacted
    assert PASSWORD not in redacted
    assert redacted == "postgresql://app:***@db:5432/crm"


def test_redacted_dsn_without_password_has_no_stars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_DATABASE_URL", "postgresql://app@db.internal/crm")
    assert Settings().dsn_redacted == "postgresql://app@db.internal:5432/crm"


def test_crm_token_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_CRM_TOKEN", "pat-na1-0123456789")
    settings = Settings()
    assert "pat-na1-0123456789" not in repr(settings)
    assert settings.crm_token.get_secret_value() == "pat-na1-0123456789"


# --- logs -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "aiohttp.access")}
    yield
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Callable[[], logging.Logger]:
    """Configure logging as a process would. Call it in the test body, so the stderr handler
    binds to the stream capsys captures during the test (not the setup phase's)."""

    def start() -> logging.Logger:
        configure_logging(level="INFO", component="adapter-crm")
        return logging.getLogger("crmsync.test")

    return start


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    err = capsys.readouterr().err
    return [json.loads(line) for line in err.splitlines() if line.strip()]


SECRETS = ("s3cret", "abc.def", "hunter2")


def test_secrets_never_reach_stderr(
    json_logs: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    log = json_logs()
    log.warning(
        "connecting to postgresql://u:s3cret@h/db with Authorization: Bearer abc.def "
        "and password=hunter2"
    )
    dsn, token, conninfo = "postgresql://u:s3cret@h/db", "abc.def", "password=hunter2"
    log.info("retrying %s (token Bearer %s, %s)", dsn, token, conninfo)
    err = capsys.readouterr().err
    for secret in SECRETS:
        assert secret not in err
    records = [json.loads(line) for line in err.splitlines()]
    assert len(records) == 2
    assert "postgresql://u:***@h/db" in str(records[0]["message"])
    assert "Bearer ***" in str(records[0]["message"])
    assert "password=***" in str(records[1]["message"])


def test_log_lines_are_json_with_the_expected_keys(
    json_logs: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    log = json_logs()
    log.info("hello %s", "world")
    [record] = lines(capsys)
    assert record["level"] == "INFO"
    assert record["logger"] == "crmsync.test"
    assert record["message"] == "hello world"
    assert record["component"] == "adapter-crm"
    assert "time" in record


def test_level_filters_and_http_noise_is_quiet(
    json_logs: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    log = json_logs()
    log.debug("too detailed")
    logging.getLogger("httpx").info("HTTP Request: GET /")
    logging.getLogger("httpx").warning("HTTP trouble")
    assert [r["message"] for r in lines(capsys)] == ["HTTP trouble"]


def test_message_without_secrets_is_untouched(
    json_logs: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    log = json_logs()
    log.info("progress 100%% of %d rows at http://example.com/x", 42)
    [record] = lines(capsys)
    assert record["message"] == "progress 100% of 42 rows at http://example.com/x"


def test_secrets_in_a_logged_exception_never_reach_stderr(
    json_logs: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    log = json_logs()
    try:
        raise ConnectionError("cannot reach postgresql://u:s3cret@h/db")
    except ConnectionError:
        log.exception("connect failed")
    assert "s3cret" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "text", ["{'user': 'u', 'password': 'hunter2'}", '{"password": "hunter2"}']
)
def test_quoted_password_keys_are_masked(
    json_logs: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str], text: str
) -> None:
    log = json_logs()
    log.info("conninfo %s", text)
    assert "hunter2" not in capsys.readouterr().err


def _redact(message: str) -> str:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "%s", (message,), None)
    assert RedactSecrets().filter(record) is True  # masks, never drops
    return record.getMessage()


_URL_SECRET = st.text(string.ascii_letters + string.digits + "!$%&*()_+-=~.:;/?#[]", min_size=1)
_TOKEN = st.text(string.ascii_letters + string.digits + "._~+/=-", min_size=1)
_PLAIN = st.text(string.ascii_letters + string.digits + "!$%&*()_+-=~.:;/?#[]@", min_size=1)
_FRAME = "retry: connection to {} failed; auth {}; conninfo {}"


@given(
    user=st.sampled_from(["app", "crmsync", "u", "svc_sync-2"]),
    url_secret=_URL_SECRET,
    token=_TOKEN,
    password=_PLAIN,
    scheme=st.sampled_from(["postgresql", "postgres", "https", "kafka"]),
)
def test_redaction_masks_any_credential(
    user: str, url_secret: str, token: str, password: str, scheme: str
) -> None:
    host = "host.example:5432/db"
    message = _FRAME.format(
        f"{scheme}://{user}:{url_secret}@{host}",
        f"Bearer {token}",
        f"host=h password={password} dbname=d",
    )
    assert _redact(message) == _FRAME.format(
        f"{scheme}://{user}:***@{host}", "Bearer ***", "host=h password=*** dbname=d"
    )
