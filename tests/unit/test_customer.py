"""normalise_customer: free-text customer rows become comparable golden records, or fail loudly."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import phonenumbers
import pycountry
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.domain.customer import GoldenRecord, normalise_customer, normalise_value
from crmsync.errors import ValidationFailed

COLUMNS = sorted(GoldenRecord.model_fields)
CID = "7f9c2a4e-1b0d-4c7e-9f1a-3d2b5e6a7c8d"


def norm(**fields: Any) -> GoldenRecord:
    return normalise_customer({"id": CID, **fields})


def rejects(field: str, **fields: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        norm(**fields)
    assert caught.value.field == field
    return caught.value


# --- email ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Alice.Smith@Example.COM ", "alice.smith@example.com"),
        ("BOB@EXAMPLE.ORG", "bob@example.org"),
        ("carol@example.net", "carol@example.net"),
    ],
)
def test_email_is_trimmed_and_lowercased(raw: str, expected: str) -> None:
    assert norm(email=raw).email == expected


@pytest.mark.parametrize("raw", ["not-an-email", "alice@", "@example.com", "a b@example.com"])
def test_invalid_email_names_the_field_and_the_value(raw: str) -> None:
    error = rejects("email", email=raw)
    assert raw.strip() in str(error)


def test_owner_email_is_validated_as_its_own_field() -> None:
    assert norm(owner_email=" Sales@Example.com").owner_email == "sales@example.com"
    rejects("owner_email", owner_email="sales-at-example")


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_blank_email_is_absent_not_an_error(blank: str | None) -> None:
    assert norm(email=blank).email is None


# --- phone ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "country", "expected"),
    [
        ("030 1234567", "germany", "+49301234567"),
        ("030 1234567", "DE", "+49301234567"),
        ("020 7946 0958", "UK", "+442079460958"),
        ("(415) 555-2671", "United States", "+14155552671"),
        ("+1 415 555 2671", None, "+14155552671"),
        ("+49 30 1234567", "France", "+49301234567"),  # an explicit prefix beats the region
    ],
)
def test_phone_becomes_e164_using_the_rows_country(
    phone: str, country: str | None, expected: str
) -> None:
    assert norm(phone=phone, country=country).phone == expected


@given(
    digits=st.text("0123456789", min_size=6, max_size=12),
    prefix=st.sampled_from(["", "0", "+49 ", "+49 (0) ", "0049 0", "+44 ", "+1 ", "00"]),
    country=st.sampled_from(["DE", "GB", "US", "FR", None]),
)
@settings(max_examples=300)
def test_a_normalised_phone_normalises_to_itself(
    digits: str, prefix: str, country: str | None
) -> None:
    """A target echoes our value back: read again, it must be the same value."""
    try:
        once = normalise_value("phone", prefix + digits, country)
    except ValidationFailed:
        return
    assert normalise_value("phone", once, country) == once
    assert normalise_value("phone", once, None) == once


def test_national_phone_without_a_country_is_rejected() -> None:
    rejects("phone", phone="030 1234567")


@pytest.mark.parametrize(
    "phone", ["+1 415", "+44 12", "+49 1", "call me", "+1 415 555 2671 0000 0000"]
)
def test_impossible_phone_is_rejected(phone: str) -> None:
    error = rejects("phone", phone=phone, country="DE")
    assert phone in str(error)


# --- country ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("germany", "DE"),
        ("Germany", "DE"),
        ("DEU", "DE"),
        ("de", "DE"),
        ("UK", "GB"),
        ("uk", "GB"),
        ("United Kingdom", "GB"),
        ("GBR", "GB"),
        ("  France ", "FR"),
        ("usa", "US"),
    ],
)
def test_country_becomes_alpha_2(raw: str, expected: str) -> None:
    assert norm(country=raw).country == expected


@pytest.mark.parametrize("raw", ["Narnia", "XX", "Atlantis Republic"])
def test_unknown_country_is_rejected(raw: str) -> None:
    error = rejects("country", country=raw)
    assert raw in str(error)


# --- enums ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        ("lifecycle_stage", "Trial", "trial"),
        ("lifecycle_stage", "  CUSTOMER ", "customer"),
        ("plan_tier", "Pro", "pro"),
        ("plan_tier", "ENTERPRISE", "enterprise"),
        ("status", " Suspended", "suspended"),
    ],
)
def test_enums_ignore_case_and_surrounding_space(field: str, raw: str, expected: str) -> None:
    assert getattr(norm(**{field: raw}), field) == expected


@pytest.mark.parametrize(
    ("field", "raw", "allowed"),
    [
        ("lifecycle_stage", "prospect", ["lead", "trial", "customer", "churned"]),
        ("plan_tier", "gold", ["free", "pro", "enterprise"]),
        ("status", "paused", ["active", "suspended", "churned"]),
    ],
)
def test_unknown_enum_value_names_the_allowed_values(
    field: str, raw: str, allowed: list[str]
) -> None:
    message = str(rejects(field, **{field: raw}))
    assert raw in message
    for value in allowed:
        assert value in message


# --- free text: names, company, address --------------------------------------------------------


FREE_TEXT = ["first_name", "last_name", "company_name", "street", "city", "postal_code", "region"]


@pytest.mark.parametrize("field", FREE_TEXT)
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\x1b[31mGrace\x1b[0m", "Grace"),  # a colour, removed whole
        ("\x1b[1;38;5;196mAda\x1b[K", "Ada"),  # 256 colours, erase line
        ("\x1b]0;owned\x07Linus", "Linus"),  # a window title (OSC ... BEL)
        ("\x1b]8;;https://evil.example\x1b\\Ada\x1b]8;;\x1b\\", "Ada"),  # a link (OSC ... ST)
        ("\x9b31mBob", "Bob"),  # the 8-bit CSI
        ("Jo\x00h\x7fn\x08", "John"),  # NUL, DEL, backspace
        ("Ann\tMarie\r\nLee", "Ann Marie Lee"),  # whitespace controls are spaces
        ("Zoë\x85Müller\x1c", "Zoë Müller"),  # C1 NEL, C0 separators
        ("\x1b[0m", None),  # nothing left
        ("Renée 山田 O'Brien-Łukasz", "Renée 山田 O'Brien-Łukasz"),  # letters stay as written
    ],
)
def test_escapes_and_control_characters_are_stripped_from_free_text(
    field: str, raw: str, expected: str | None
) -> None:
    assert getattr(norm(**{field: raw}), field) == expected


@pytest.mark.parametrize("field", ["email", "owner_email"])
def test_an_email_with_an_escape_sequence_is_refused_not_rewritten(field: str) -> None:
    """An address is an identifier: guessing which part was meant could merge two people."""
    rejects(field, **{field: "\x1b[31mada@example.com\x1b[0m"})


@settings(max_examples=300)
@given(st.text(), st.sampled_from(FREE_TEXT))
def test_free_text_never_keeps_a_control_character(text: str, field: str) -> None:
    value = getattr(norm(**{field: text}), field)
    assert value is None or not any(0 <= ord(c) < 32 or 127 <= ord(c) < 160 for c in value)
    assert getattr(norm(**{field: value}), field) == value


# --- dates, time zones, languages, flags ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, "1970-01-01"),
        (-1, "1969-12-31"),
        (7305, "1990-01-01"),
        ((dt.date(1985, 6, 15) - dt.date(1970, 1, 1)).days, "1985-06-15"),
        ("1985-06-15", "1985-06-15"),
    ],
)
def test_birth_date_from_debezium_days_or_iso_text(raw: int | str, expected: str) -> None:
    assert norm(birth_date=raw).birth_date == expected


@pytest.mark.parametrize("raw", ["1985-13-01", "yesterday", "15/06/1985", 10**9])
def test_invalid_birth_date_is_rejected(raw: int | str) -> None:
    rejects("birth_date", birth_date=raw)


def _days(date: dt.date) -> int:
    return (date - dt.date(1970, 1, 1)).days


@pytest.mark.parametrize(
    "raw", ["2100-01-01", _days(dt.date(2100, 1, 1)), (dt.date.today() + dt.timedelta(2))]
)
def test_a_birth_date_in_the_future_is_refused(raw: int | str | dt.date) -> None:
    if isinstance(raw, dt.date):
        raw = raw.isoformat()
    assert "in the future" in str(rejects("birth_date", birth_date=raw))


@pytest.mark.parametrize("raw", ["1899-12-31", "0001-01-01", _days(dt.date(1850, 5, 1))])
def test_a_birth_date_before_1900_is_refused(raw: int | str) -> None:
    assert "before 1900" in str(rejects("birth_date", birth_date=raw))


def test_birth_dates_from_1900_to_today_are_kept() -> None:
    today = dt.datetime.now(dt.UTC).date()
    assert norm(birth_date="1900-01-01").birth_date == "1900-01-01"
    assert norm(birth_date=today.isoformat()).birth_date == today.isoformat()
    assert norm(birth_date=_days(today)).birth_date == today.isoformat()


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "UTC", "Asia/Kolkata"])
def test_iana_time_zone_is_kept(zone: str) -> None:
    assert norm(timezone=zone).timezone == zone


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "CEST+2", "../etc/passwd", "Europe/", "localtime", "Factory"]
)
def test_unknown_time_zone_is_rejected(zone: str) -> None:
    rejects("timezone", timezone=zone)


@pytest.mark.parametrize("zone", ["America", "Etc", "America/Argentina"])
def test_time_zone_area_without_a_city_is_a_validation_error(zone: str) -> None:
    rejects("timezone", timezone=zone)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("en_us", "en-US"), ("EN-gb", "en-GB"), ("de", "de"), (" pt_br ", "pt-BR"), ("fil", "fil")],
)
def test_language_tag_is_normalised(raw: str, expected: str) -> None:
    assert norm(language=raw).language == expected


@pytest.mark.parametrize("raw", ["english!", "e", "en us", "12-34"])
def test_malformed_language_tag_is_rejected(raw: str) -> None:
    rejects("language", language=raw)


@pytest.mark.parametrize("field", ["consent_email", "consent_sms", "do_not_contact"])
def test_flags_are_booleans_defaulting_to_false(field: str) -> None:
    assert getattr(norm(**{field: True}), field) is True
    assert getattr(norm(**{field: False}), field) is False
    assert getattr(norm(), field) is False
    assert getattr(norm(**{field: None}), field) is False
    rejects(field, **{field: "yes"})


def test_free_text_is_trimmed_and_inner_whitespace_collapsed() -> None:
    record = norm(first_name="  Anna \t Maria ", city="\n", company_name="ACME   GmbH")
    assert record.first_name == "Anna Maria"
    assert record.city is None
    assert record.company_name == "ACME GmbH"


@pytest.mark.parametrize("row", [{}, {"id": None}, {"id": ""}, {"email": "a@example.com"}])
def test_missing_id_is_rejected(row: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        normalise_customer(row)
    assert caught.value.field == "id"


def test_timestamps_pass_through_and_epoch_millis_become_iso() -> None:
    record = norm(updated_at="2024-05-01T10:00:00Z", deleted_at=0)
    assert record.updated_at == "2024-05-01T10:00:00Z"
    assert record.deleted_at == "1970-01-01T00:00:00+00:00"


# --- properties -------------------------------------------------------------------------------


def _casings(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from([text, text.upper(), text.lower(), text.title(), f"  {text} "])


_PHONE_REGIONS = sorted(
    region
    for region in phonenumbers.SUPPORTED_REGIONS
    if phonenumbers.example_number(region) is not None
    and pycountry.countries.get(alpha_2=region) is not None
)
# tzdata files that are not zone names: normalise_customer rejects them (see above).
_ZONES = sorted(zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"})
_E164 = phonenumbers.PhoneNumberFormat


@st.composite
def _country_and_phone(draw: st.DrawFn) -> dict[str, str]:
    region = draw(st.sampled_from(_PHONE_REGIONS))
    country = pycountry.countries.get(alpha_2=region)
    name = draw(st.sampled_from([country.name, country.alpha_2, country.alpha_3]))
    style = draw(st.sampled_from([_E164.NATIONAL, _E164.INTERNATIONAL, _E164.E164]))
    phone = phonenumbers.format_number(phonenumbers.example_number(region), style)
    return {"country": draw(_casings(name)), "phone": phone}


_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "email": st.emails().flatmap(_casings),
    "owner_email": st.emails().flatmap(_casings),
    "first_name": st.text(),
    "last_name": st.text(),
    "company_name": st.text(),
    "street": st.text(),
    "city": st.text(),
    "postal_code": st.text(),
    "region": st.text(),
    "birth_date": st.dates(dt.date(1900, 1, 1), dt.date.today()).map(dt.date.isoformat)
    | st.integers(_days(dt.date(1900, 1, 1)), _days(dt.date.today())),
    "lifecycle_stage": st.sampled_from(["lead", "trial", "customer", "churned"]).flatmap(_casings),
    "plan_tier": st.sampled_from(["free", "pro", "enterprise"]).flatmap(_casings),
    "status": st.sampled_from(["active", "suspended", "churned"]).flatmap(_casings),
    "timezone": st.sampled_from(_ZONES),
    "language": st.from_regex(r"[a-zA-Z]{2,3}([-_][a-zA-Z0-9]{2,8}){0,2}", fullmatch=True),
    "consent_email": st.booleans(),
    "consent_sms": st.booleans(),
    "do_not_contact": st.booleans(),
    "updated_at": st.datetimes(timezones=st.just(dt.UTC)).map(dt.datetime.isoformat),
}


@st.composite
def valid_rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"id": str(draw(st.uuids()))}
    optional = {name: values | st.none() for name, values in _PLAUSIBLE.items()}
    row.update(draw(st.fixed_dictionaries({}, optional=optional)))
    if draw(st.booleans()):
        row.update(draw(_country_and_phone()))
    return row


# Arbitrary text, biased towards values that are almost right so every validator is reached.
_ANY_TEXT = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet="+0123456789 ()-", max_size=25),
    st.sampled_from(["", " ", "UK", "de", "Trial", "en_us", "UTC", "a@b.c", "0", "true"]),
    *[_PLAUSIBLE[name] for name in ("email", "lifecycle_stage", "timezone", "language")],
    st.dates().map(dt.date.isoformat),
    _country_and_phone().flatmap(lambda pair: st.sampled_from(sorted(pair.values()))),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(COLUMNS), _ANY_TEXT))
def test_any_text_row_normalises_or_fails_with_validation_failed(row: dict[str, Any]) -> None:
    try:
        record = normalise_customer(row)
    except ValidationFailed as error:
        assert error.field in {*COLUMNS, "id"}
    else:
        assert isinstance(record, GoldenRecord)
        assert record.id == str(row["id"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_rows())
def test_normalising_is_idempotent(row: dict[str, Any]) -> None:
    record = normalise_customer(row)
    assert normalise_customer(record.model_dump()) == record
