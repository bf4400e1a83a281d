"""Sample customers for the embedded stack, written the way apps write them: messy on purpose
(mixed-case emails, local phone formats, country names) so the normalising has work to do."""

from __future__ import annotations

import contextlib
import random
import unicodedata
from typing import Any

import phonenumbers
import psycopg
from faker import Faker

__all__ = ["insert_customers", "touch_random_customer"]

_LOCALES = {"en_US": "US", "de_DE": "DE", "fr_FR": "FR", "en_GB": "United Kingdom"}
_COLUMNS = (
    "email", "phone", "first_name", "last_name", "company_name", "street", "city",
    "postal_code", "country", "lifecycle_stage", "plan_tier", "status", "timezone", "language",
    "consent_email",
)  # fmt: skip
_TZ = {"en_US": "America/New_York", "de_DE": "Europe/Berlin", "fr_FR": "Europe/Paris",
       "en_GB": "Europe/London"}  # fmt: skip


def _phone(person: Faker, rng: random.Random, locale: str) -> str:
    """A number as people type it in that country; Faker's are re-drawn until they could exist
    (its US ones carry extensions and some others are too short)."""
    region = _LOCALES[locale] if len(_LOCALES[locale]) == 2 else "GB"
    for _ in range(20):
        text = f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}" if locale == "en_US" \
            else person.phone_number()  # fmt: skip
        with contextlib.suppress(phonenumbers.NumberParseException):
            if phonenumbers.is_possible_number(phonenumbers.parse(text, region)):
                return text
    return ""


def _customer(fake: Faker, rng: random.Random, n: int) -> tuple[Any, ...]:
    locale = rng.choice(list(_LOCALES))
    person = fake[locale]
    first, last = person.first_name(), person.last_name()
    # Mail providers hand out ASCII addresses even to Jürgen and Sébastien (Stripe refuses
    # anything else), so the name is folded: jurgen.muller.7@web.de.
    local = unicodedata.normalize("NFKD", f"{first}.{last}.{n}").encode("ascii", "ignore")
    email = f"{local.decode()}@{person.free_email_domain()}".replace(" ", "")
    if rng.random() < 0.01:
        email = f"{first} at {last}"  # about 1 in 100 is bad input, to show the dead letters
    return (
        email if rng.random() < 0.7 else email.upper(),
        _phone(person, rng, locale),
        first,
        last,
        person.company(),
        person.street_address(),
        person.city(),
        person.postcode(),
        _LOCALES[locale],
        rng.choice(["lead", "Trial", "customer", "churned"]),
        rng.choice(["free", "pro", "Enterprise"]),
        rng.choice(["active", "active", "suspended"]),
        _TZ[locale],
        locale.replace("_", "-"),
        rng.random() < 0.5,
    )


def insert_customers(dsn: str, count: int, seed: int | None = None) -> int:
    rng = random.Random(seed)
    fake = Faker(list(_LOCALES))
    fake.seed_instance(seed)
    start = rng.randrange(10**9)
    rows = [_customer(fake, rng, start + i) for i in range(count)]
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.executemany(
            f"insert into public.customers ({', '.join(_COLUMNS)}) values ({placeholders})", rows
        )
    return count


def touch_random_customer(dsn: str, rng: random.Random) -> None:
    """Keep sample data flowing the way apps do: a new lead, a consent change, a customer
    updating their own phone number (plans and stages are the CRM's to change), and now and
    then someone signed up twice (identity resolution merges them)."""
    with psycopg.connect(dsn) as conn:
        choice = rng.random()
        if choice < 0.03:  # another app signs up someone already there: a duplicate to merge
            conn.execute(
                "insert into public.customers (email, phone, first_name, last_name, street,"
                " city, postal_code, country, timezone, language)"
                " select upper(email), phone, lower(first_name), last_name, street, city,"
                " postal_code, country, timezone, language from public.customers"
                " where deleted_at is null order by random() limit 1"
            )
            return
        if choice < 0.3:
            conn.close()
            insert_customers(dsn, 1, rng.randrange(10**9))
            return
        column, value = (
            ("consent_email", rng.random() < 0.5)
            if choice < 0.6
            else ("phone", f"+1 (212) 555-{rng.randint(1000, 9999)}")
        )
        conn.execute(
            f"update public.customers set {column} = %s where id = "
            "(select id from public.customers where deleted_at is null "
            " order by random() limit 1)",
            (value,),
        )
