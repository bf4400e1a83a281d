"""How well and how fast identity matching works, on generated people with known truth.

    python -m bench.identity quality   # precision/recall of links and merges, no database
    python -m bench.identity speed     # candidates + match against 1,000,000 indexed customers

Both are seeded and write bench/results/identity.json (their own section) and identity.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import json
import os
import random
import re
import socket
import statistics
import subprocess
import tempfile
import time
import unicodedata
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import phonenumbers
from faker import Faker
from nicknames import NickNamer

from bench.machine import machine
from crmsync.domain.customer import normalise_value
from crmsync.domain.identity import (
    Candidate,
    Match,
    Person,
    Thresholds,
    blocking_keys,
    match,
    person_of,
)
from crmsync.errors import ValidationFailed
from crmsync.identity import CANDIDATE_LIMIT

RESULTS = Path(__file__).parent / "results"
LIBRARIES = ("faker", "rapidfuzz", "jellyfish", "nicknames", "phonenumbers", "psycopg")
#: Locale -> the country its phones are read in; weights: how often a person is from there.
LOCALES = {"en_US": "US", "en_GB": "GB", "de_DE": "DE", "fr_FR": "FR"}
LOCALE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
#: How often a canonical customer lacks a field (CRMs are patchy).
MISSING = {"birth_date": 0.25, "company_name": 0.3, "phone": 0.15, "street": 0.08}
_NICKNAMES = NickNamer()
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_FIELDS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "company_name",
    "street",
    "postal_code",
    "city",
    "country",
    "birth_date",
)
#: Street words and how people shorten them, per language.
_SHORT_STREETS = {
    "Street": ("St.", "St", "ST"),
    "Road": ("Rd.", "Rd"),
    "Avenue": ("Ave", "Av."),
    "Lane": ("Ln",),
    "Drive": ("Dr.",),
    "Court": ("Ct",),
    "Place": ("Pl.",),
    "Square": ("Sq",),
    "Boulevard": ("Blvd",),
    "straße": ("str.", "strasse", "str"),
    "Straße": ("Str.", "Strasse"),
    "rue": ("r.", "Rue"),
    "avenue": ("av.", "ave"),
    "boulevard": ("bd", "boul."),
    "place": ("pl.",),
    "allée": ("all.", "allee"),
    "Allee": ("Al.",),
    "chemin": ("ch.",),
    "impasse": ("imp.",),
}
_TRANSLIT = str.maketrans(
    {
        "ä": "ae",
        "ö": "oe",
        "ü": "ue",
        "ß": "ss",
        "Ä": "Ae",
        "Ö": "Oe",
        "Ü": "Ue",
        "é": "e",
        "è": "e",
        "ç": "c",
        "ë": "e",
        "ï": "i",
    }
)


def _ascii(text: str | None) -> str:
    plain = unicodedata.normalize("NFKD", (text or "").translate(_TRANSLIT))
    return re.sub(r"[^a-z]", "", plain.encode("ascii", "ignore").decode().lower())


def _given(first_name: str | None) -> str:
    return _ascii((first_name or "").split(" ")[0].split("-")[0])


def golden(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw values as an app writes them -> the golden values, normalised as the pipeline does."""
    country = normalise_value("country", raw.get("country"))
    return {f: normalise_value(f, raw.get(f), country) for f in _FIELDS}


# --- people ----------------------------------------------------------------------------------


class People:
    """Seeded, realistic people from several locales (Faker), as raw values an app would hold."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fakers: dict[str, Faker] = {}
        for i, locale in enumerate(LOCALES):
            self.fakers[locale] = Faker(locale)
            self.fakers[locale].seed_instance(seed * 101 + i)
        self.emails: set[str] = set()

    def locale(self) -> str:
        return self.rng.choices(list(LOCALES), LOCALE_WEIGHTS)[0]

    def phone(self, locale: str) -> str:
        """A new phone number, E.164 (the numbers Faker makes that the pipeline would accept)."""
        for _ in range(50):
            try:
                e164 = normalise_value("phone", self.fakers[locale].phone_number(), LOCALES[locale])
            except ValidationFailed:
                continue
            if e164:
                return str(e164)
        raise RuntimeError(f"no valid phone from Faker {locale}")

    def email(
        self, first: str | None, last: str | None, locale: str, domains: list[str] | None = None
    ) -> str:
        """An address built from the name as people pick them, unique in this run."""
        f, l_, rng = _ascii(first) or "x", _ascii(last) or "y", self.rng
        if domains:
            domain = rng.choice(domains)
        elif rng.random() < 0.25:
            domain = self.fakers[locale].domain_name()
        else:
            domain = self.fakers[locale].free_email_domain()
        local = rng.choice(
            [
                f"{f}.{l_}",
                f"{f}{l_}",
                f"{f[0]}.{l_}",
                f"{f}_{l_}",
                f"{l_}.{f}",
                f"{f[0]}{l_}",
                f"{f}.{l_}{rng.randrange(1, 99)}",
            ]
        )
        email = f"{local}@{domain}"
        while email in self.emails:
            email = f"{local}{rng.randrange(1, 9999)}@{domain}"
        self.emails.add(email)
        return email

    def address(self, locale: str) -> dict[str, str]:
        fake = self.fakers[locale]
        street = fake.street_address().replace("\n", ", ")
        return {"street": street, "postal_code": fake.postcode(), "city": fake.city()}

    def birth_date(self, low: int = 18, high: int = 88) -> str:
        return self.fakers["en_US"].date_of_birth(minimum_age=low, maximum_age=high).isoformat()

    def person(self, locale: str | None = None) -> tuple[str, dict[str, Any]]:
        """(locale, raw values) of someone new."""
        locale = locale or self.locale()
        fake = self.fakers[locale]
        first, last = fake.first_name(), fake.last_name()
        values: dict[str, Any] = {
            "first_name": first,
            "last_name": last,
            "email": self.email(first, last, locale),
            "phone": self.phone(locale),
            "company_name": fake.company(),
            "country": LOCALES[locale],
            "birth_date": self.birth_date(),
            **self.address(locale),
        }
        for name, share in MISSING.items():
            if self.rng.random() < share:
                values[name] = None
        if values["street"] is None:
            values["postal_code"] = values["city"] = None
        return locale, values

    def relative(self, locale: str, of: dict[str, Any], taken: set[str]) -> dict[str, Any]:
        """Someone living with `of`: same surname, address and landline, sometimes the same
        email; their own first name and birth date."""
        fake, rng = self.fakers[locale], self.rng
        first = fake.first_name()
        while not _another_name(first, taken):
            first = fake.first_name()
        values = dict(of)
        values["first_name"] = first
        values["birth_date"] = None if rng.random() < 0.25 else self.birth_date(1, 90)
        if rng.random() < 0.3 or not of.get("phone"):  # their own mobile, not the landline
            values["phone"] = self.phone(locale)
        if rng.random() < 0.8 or not of.get("email"):  # family members rarely share an inbox
            values["email"] = self.email(first, of["last_name"], locale)
        if rng.random() < 0.6:
            values["company_name"] = None if rng.random() < 0.5 else fake.company()
        return values


def _another_name(first: str, taken: set[str]) -> bool:
    """Whether a household could call someone `first` next to `taken`: not the same name, the
    same first given name (Hans Peter, Hans Georg) or a nickname of one (Frank, Francis)."""
    given = _ascii(first.split(" ")[0].split("-")[0])
    like = {given} | _NICKNAMES.nicknames_of(given) | _NICKNAMES.canonicals_of(given)
    return not like & taken


def render_phone(rng: random.Random, phone: str, country: str) -> str:
    """A phone number as people write it: national, international, with dashes, dots, 00."""
    number = phonenumbers.parse(phone, country)
    formats = (
        phonenumbers.PhoneNumberFormat.E164,
        phonenumbers.PhoneNumberFormat.NATIONAL,
        phonenumbers.PhoneNumberFormat.INTERNATIONAL,
        phonenumbers.PhoneNumberFormat.RFC3966,
    )
    text = phonenumbers.format_number(number, rng.choice(formats))
    style = rng.random()
    if style < 0.2:
        text = text.replace(" ", "-")
    elif style < 0.3:
        text = text.replace(" ", ".")
    elif style < 0.4:
        text = re.sub(r"[\s\-()]", "", text)
    elif style < 0.5 and text.startswith("+") and number.country_code != 1:  # NANP dials 011
        text = "00" + text[1:].replace("-", " ")
    return text


# --- corruptions -----------------------------------------------------------------------------


def typo(rng: random.Random, text: str) -> str:
    """One keyboard slip: a letter inserted, dropped, replaced, or two swapped."""
    if len(text) < 3:
        return text + rng.choice(_LETTERS)
    i = rng.randrange(1, len(text) - 1)
    return rng.choice(
        [
            text[:i] + rng.choice(_LETTERS) + text[i:],
            text[:i] + text[i + 1 :],
            text[:i] + rng.choice(_LETTERS) + text[i + 1 :],
            text[:i] + text[i + 1] + text[i] + text[i + 2 :],
        ]
    )


def _field_typo(name: str) -> Callable[[People, str, dict[str, Any]], bool]:
    def corrupt(g: People, locale: str, v: dict[str, Any]) -> bool:
        if not v.get(name):
            return False
        v[name] = typo(g.rng, v[name])
        return True

    return corrupt


def _swap_names(g: People, locale: str, v: dict[str, Any]) -> bool:
    if not v.get("first_name"):
        return False
    v["first_name"], v["last_name"] = v["last_name"], v["first_name"]
    return True


def _nickname(g: People, locale: str, v: dict[str, Any]) -> bool:
    short = sorted(_NICKNAMES.nicknames_of((v.get("first_name") or "").lower()))
    if not short:
        return False
    v["first_name"] = g.rng.choice(short).capitalize()
    return True


def _initial(g: People, locale: str, v: dict[str, Any]) -> bool:
    if not v.get("first_name"):
        return False
    v["first_name"] = v["first_name"][0] + g.rng.choice([".", ""])
    return True


def _transliterate(g: People, locale: str, v: dict[str, Any]) -> bool:
    names = (v.get("first_name") or "", v.get("last_name") or "")
    if tuple(n.translate(_TRANSLIT) for n in names) == names:
        return False
    v["first_name"], v["last_name"] = (n.translate(_TRANSLIT) or None for n in names)
    return True


def _address_format(g: People, locale: str, v: dict[str, Any]) -> bool:
    if not v.get("street"):
        return False
    rng, street = g.rng, v["street"]
    for word, short in _SHORT_STREETS.items():
        if word in street:
            street = street.replace(word, rng.choice(short), 1)
            break
    street = rng.choice(
        [
            street,
            street.upper(),
            street.lower(),
            street.replace(",", ""),
            street.replace(" ", "  ") + ".",
            street.replace("-", " "),
        ]
    )
    v["street"] = street
    if v.get("postal_code"):
        v["postal_code"] = rng.choice([v["postal_code"].replace(" ", ""), v["postal_code"].lower()])
    if v.get("city"):
        v["city"] = rng.choice([v["city"].upper(), v["city"].lower(), v["city"].replace("-", " ")])
    return True


def _missing(g: People, locale: str, v: dict[str, Any]) -> bool:
    name = g.rng.choices(
        ["email", "phone", "birth_date", "company_name", "street", "city", "first_name"],
        [3, 3, 3, 2, 1, 1, 0.5],
    )[0]
    if not v.get(name):
        return False
    v[name] = None
    return True


def _changed_email(g: People, locale: str, v: dict[str, Any]) -> bool:
    if not v.get("email"):
        return False
    if g.rng.random() < 0.3:
        local, _, domain = v["email"].partition("@")
        v["email"] = f"{typo(g.rng, local)}@{domain}"
    else:
        v["email"] = g.email(v["first_name"], v["last_name"], locale)
    return True


def _changed_phone(g: People, locale: str, v: dict[str, Any]) -> bool:
    if not v.get("phone"):
        return False
    v["phone"] = g.phone(locale)
    return True


def _birth_swap(g: People, locale: str, v: dict[str, Any]) -> bool:
    if not v.get("birth_date"):
        return False
    year, month, day = v["birth_date"].split("-")
    if int(day) > 12 or day == month:
        return False
    v["birth_date"] = f"{year}-{day}-{month}"
    return True


def _moved(g: People, locale: str, v: dict[str, Any]) -> bool:
    v.update(g.address(locale))
    return True


def _new_job(g: People, locale: str, v: dict[str, Any]) -> bool:
    v["company_name"] = g.fakers[locale].company()
    return True


#: What goes wrong in a duplicate, and how often (weights). Each duplicate takes one to three.
CORRUPTIONS: dict[str, tuple[float, Callable[[People, str, dict[str, Any]], bool]]] = {
    "typo_first_name": (10, _field_typo("first_name")),
    "typo_last_name": (12, _field_typo("last_name")),
    "typo_street": (4, _field_typo("street")),
    "typo_city": (2, _field_typo("city")),
    "swap_first_last": (5, _swap_names),
    "nickname": (8, _nickname),
    "initial": (5, _initial),
    "transliterated": (3, _transliterate),
    "address_format": (12, _address_format),
    "missing_field": (15, _missing),
    "changed_email": (10, _changed_email),
    "changed_phone": (8, _changed_phone),
    "birth_day_month_swap": (5, _birth_swap),
    "moved": (4, _moved),
    "new_job": (3, _new_job),
}
#: How many corruptions a duplicate takes, and how often.
CORRUPTION_COUNTS = {1: 0.45, 2: 0.35, 3: 0.2}


def duplicate(g: People, locale: str, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of `values` as another app would hold it: the phone written its own way and one
    to three corruptions (names in `CORRUPTIONS`)."""
    v = dict(values)
    count = g.rng.choices(list(CORRUPTION_COUNTS), list(CORRUPTION_COUNTS.values()))[0]
    names, weights = list(CORRUPTIONS), [w for w, _ in CORRUPTIONS.values()]
    applied: list[str] = []
    while len(applied) < count:
        name = g.rng.choices(names, weights)[0]
        if name not in applied and CORRUPTIONS[name][1](g, locale, v):
            applied.append(name)
    if v.get("phone"):
        v["phone"] = render_phone(g.rng, v["phone"], LOCALES[locale])
    return v, applied


# --- matching as the database does it -----------------------------------------------------


class MemoryIndex:
    """sync.identity_index and sync.identity_keys in memory, asked as `crmsync.identity.candidates`
    asks the database: each key's block in key-table order (by customer id), at most
    CANDIDATE_LIMIT of it, then the customers sharing the most keys first, at most
    CANDIDATE_LIMIT (ties, which the database leaves to its sort, by customer id)."""

    def __init__(self) -> None:
        self.people: dict[str, Person] = {}
        self.by_key: dict[str, list[str]] = defaultdict(list)

    def add(self, customer_id: str, person: Person) -> None:
        # A uuid's text sorts as PostgreSQL's uuid does (bytes in order, fixed-width hex).
        for key in blocking_keys(person):
            bisect.insort(self.by_key[key], customer_id)
        self.people[customer_id] = person

    def candidates(self, person: Person, exclude: str | None = None) -> list[Candidate]:
        shared: Counter[str] = Counter()
        for key in blocking_keys(person):
            block = (cid for cid in self.by_key.get(key, ()) if cid != exclude)
            shared.update(islice(block, CANDIDATE_LIMIT))
        top = sorted(shared, key=lambda cid: (-shared[cid], cid))[:CANDIDATE_LIMIT]
        return [Candidate(cid, self.people[cid]) for cid in top]


# --- quality ---------------------------------------------------------------------------------


@dataclass
class Canonical:
    """The generated canonical customers and which of them are one real person."""

    records: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # id, locale
    entity_of: dict[str, int] = field(default_factory=dict)
    ids_of: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    kinds: Counter[str] = field(default_factory=Counter)
    household: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, g: People, locale: str, raw: dict[str, Any], entity: int, kind: str) -> str:
        customer_id = str(uuid.UUID(int=g.rng.getrandbits(128), version=4))
        self.records.append((customer_id, locale, raw))
        self.entity_of[customer_id] = entity
        self.ids_of[entity].append(customer_id)
        self.kinds[kind] += 1
        return customer_id


def build_canonical(g: People, size: int) -> Canonical:
    """`size` people: a quarter in households of 2-4 (shared surname, address, mostly the
    landline), some namesakes of others (same first and last name), and 4% entered twice
    (a corrupted copy, for duplicate detection)."""
    c = Canonical()
    entity = 0
    while entity < size:
        locale, raw = g.person()
        if c.records and g.rng.random() < 0.03:  # a namesake of someone already here
            _, _, other = g.rng.choice(c.records)
            raw["first_name"], raw["last_name"] = other["first_name"], other["last_name"]
        members = [raw]
        if g.rng.random() < 0.12:
            taken = {_given(raw["first_name"])}
            for _ in range(g.rng.randint(1, 3)):
                members.append(g.relative(locale, raw, taken))
                taken.add(_given(members[-1]["first_name"]))
        for member in members:
            c.add(g, locale, member, entity, "person" if member is raw else "household_member")
            c.household[c.records[-1][0]] = members
            if g.rng.random() < 0.04:
                copy, _ = duplicate(g, locale, member)
                c.add(g, locale, copy, entity, "internal_duplicate")
                c.household[c.records[-1][0]] = members
            entity += 1
    g.rng.shuffle(c.records)  # stored in no meaningful order
    return c


Incoming = tuple[str, dict[str, Any], set[str], list[str]]


def _incoming(g: People, c: Canonical, count: int) -> Iterator[Incoming]:
    """(kind, raw values, the customer ids that are this person, corruptions) per record:
    55% duplicates, 20% family members of a customer, 10% namesakes, 15% someone new."""
    for _ in range(count):
        customer_id, locale, raw = g.rng.choice(c.records)
        truth = set(c.ids_of[c.entity_of[customer_id]])
        roll = g.rng.random()
        if roll < 0.55:
            values, applied = duplicate(g, locale, raw)
            yield "duplicate", values, truth, applied
        elif roll < 0.75:
            taken = {_given(m["first_name"]) for m in c.household[customer_id]}
            yield "family_member", g.relative(locale, raw, taken), set(), []
        elif roll < 0.85:
            _, values = g.person(locale)
            values["first_name"], values["last_name"] = raw["first_name"], raw["last_name"]
            if values["email"]:
                values["email"] = g.email(raw["first_name"], raw["last_name"], locale)
            if g.rng.random() < 0.3:
                values["city"] = raw["city"]
            yield "namesake", values, set(), []
        else:
            yield "new_person", g.person()[1], set(), []


@dataclass
class Tally:
    """Verdicts on records whose truth is known."""

    outcomes: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    by_corruption: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    methods: Counter[str] = field(default_factory=Counter)
    wrong: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, verdict: Match, truth: set[str], applied: Iterable[str] = ()) -> str:
        if verdict.outcome == "link":
            right = verdict.customer_id in truth
            outcome = "link_right" if right else "link_wrong"
            self.methods[f"{verdict.method}_{'right' if right else 'wrong'}"] += 1
        else:
            outcome = verdict.outcome
        self.outcomes[outcome] += 1
        self.by_kind[kind][outcome] += 1
        for name in applied:
            self.by_corruption[name][outcome] += 1
        return outcome

    def summary(self, positives: int) -> dict[str, Any]:
        total = sum(self.outcomes.values())
        links = self.outcomes["link_right"] + self.outcomes["link_wrong"]
        return {
            "records": total,
            "duplicates": positives,
            "precision": round(self.outcomes["link_right"] / links, 4) if links else None,
            "recall": round(self.outcomes["link_right"] / positives, 4) if positives else None,
            "review_share": round(self.outcomes["review"] / total, 4),
            "new_share": round(self.outcomes["new"] / total, 4),
            "outcomes": dict(self.outcomes),
            "by_kind": {k: dict(v) for k, v in sorted(self.by_kind.items())},
            "by_corruption": {k: dict(v) for k, v in sorted(self.by_corruption.items())},
            "methods": dict(self.methods),
        }


def _person(raw: dict[str, Any]) -> Person:
    return person_of(golden(raw))


def quality(seed: int, size: int, incoming: int, thresholds: Thresholds) -> dict[str, Any]:
    started = time.perf_counter()
    g = People(seed)
    c = build_canonical(g, size)
    index = MemoryIndex()
    people = {}
    for customer_id, _, raw in c.records:
        people[customer_id] = _person(raw)
        index.add(customer_id, people[customer_id])
    generated = time.perf_counter() - started

    links, positives, sizes = Tally(), 0, []
    examples: list[dict[str, Any]] = []
    for kind, raw, truth, applied in _incoming(g, c, incoming):
        person = _person(raw)
        found = index.candidates(person)
        sizes.append(len(found))
        outcome = links.add(kind, match(person, found, thresholds), truth, applied)
        positives += bool(truth)
        if outcome == "link_wrong" or (truth and outcome == "new"):
            examples.append(
                {
                    "kind": kind,
                    "outcome": outcome,
                    "corruptions": applied,
                    "record": raw,
                    "truth": [people[t].row() for t in truth],
                }
            )

    merges, pairs_true, pairs_found, pairs_wrong = Tally(), set(), set(), set()
    for ids in c.ids_of.values():
        pairs_true.update(frozenset((a, b)) for a in ids for b in ids if a < b)
    for customer_id, _, _ in c.records:
        verdict = match(
            people[customer_id], index.candidates(people[customer_id], customer_id), thresholds
        )
        truth = set(c.ids_of[c.entity_of[customer_id]]) - {customer_id}
        kind = "has_duplicate" if truth else "unique"
        merges.add(kind, verdict, truth)
        if verdict.outcome == "link":
            pair = frozenset((customer_id, verdict.customer_id or ""))
            (pairs_found if pair in pairs_true else pairs_wrong).add(pair)
    merge = merges.summary(sum(1 for ids in c.ids_of.values() if len(ids) > 1 for _ in ids))
    merge["pairs"] = {
        "true": len(pairs_true),
        "found": len(pairs_found),
        "wrong": len(pairs_wrong),
        "precision": round(len(pairs_found) / max(1, len(pairs_found) + len(pairs_wrong)), 4),
        "recall": round(len(pairs_found) / max(1, len(pairs_true)), 4),
    }
    return {
        "seed": seed,
        "thresholds": {"auto_link": thresholds.auto_link, "review": thresholds.review},
        "canonical": {"customers": len(c.records), "kinds": dict(c.kinds)},
        "candidate_limit": CANDIDATE_LIMIT,
        "candidates": "in memory as crmsync.identity.candidates: per key at most"
        f" {CANDIDATE_LIMIT} by customer id, ranked by keys shared, top {CANDIDATE_LIMIT}",
        "mean_candidates": round(statistics.fmean(sizes), 2),
        "max_candidates": max(sizes),
        "link": links.summary(positives),
        "merge": merge,
        "corruption_mix": {
            "weights": {k: w for k, (w, _) in CORRUPTIONS.items()},
            "per_duplicate": CORRUPTION_COUNTS,
            "canonical_missing": MISSING,
        },
        "seconds": {
            "generate_and_index": round(generated, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "misses": examples[:40],
    }


# --- speed -----------------------------------------------------------------------------------


@dataclass
class Pools:
    """Values drawn from Faker once (so common names stay common) and recombined: a million
    people without a million Faker calls."""

    first: dict[str, list[str]]
    last: dict[str, list[str]]
    street: dict[str, list[str]]
    place: dict[str, list[tuple[str, str]]]
    company: dict[str, list[str]]
    phone: dict[str, list[str]]
    domain: dict[str, list[str]]


def make_pools(g: People, size: int) -> Pools:
    def each(make: Callable[[Faker, str], Any]) -> dict[str, list[Any]]:
        return {loc: [make(fake, loc) for _ in range(size)] for loc, fake in g.fakers.items()}

    return Pools(
        first=each(lambda f, _: f.first_name()),
        last=each(lambda f, _: f.last_name()),
        street=each(lambda f, _: f.street_address().replace("\n", ", ")),
        place=each(lambda f, _: (f.postcode(), f.city())),
        company=each(lambda f, _: f.company()),
        phone=each(lambda _, loc: g.phone(loc)),
        domain=each(
            lambda f, _: f.free_email_domain() if g.rng.random() < 0.75 else f.domain_name()
        ),
    )


def pooled_people(g: People, pools: Pools, count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """`count` (locale, golden values); a fifth live with the one before (a household)."""
    rng, previous = g.rng, None
    start, span = dt.date(1935, 1, 1).toordinal(), 72 * 365
    for _ in range(count):
        locale = rng.choices(list(LOCALES), LOCALE_WEIGHTS)[0]
        first = rng.choice(pools.first[locale])
        if previous and rng.random() < 0.2:
            locale, v = previous[0], dict(previous[1])
            v["first_name"] = first
            if rng.random() < 0.3:
                v["phone"] = None
        else:
            postal, city = rng.choice(pools.place[locale])
            v = {
                "last_name": rng.choice(pools.last[locale]),
                "street": rng.choice(pools.street[locale]),
                "postal_code": postal,
                "city": city,
                "country": LOCALES[locale],
                "company_name": rng.choice(pools.company[locale]) if rng.random() < 0.7 else None,
                "phone": None
                if rng.random() < 0.15
                else rng.choice(pools.phone[locale])[:-6] + f"{rng.randrange(10**6):06d}",
            }
        v["first_name"] = first
        v["email"] = g.email(first, v["last_name"], locale, pools.domain[locale])
        v["birth_date"] = (
            dt.date.fromordinal(start + rng.randrange(span)).isoformat()
            if rng.random() < 0.75
            else None
        )
        previous = (locale, v)
        yield locale, v


_COPY_SQL = (
    "copy sync.identity_index (customer_id, email, phone, first_name, last_name, company,"
    " street, postal_code, city, birth_date, keys) from stdin"
)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


#: The previous design, kept as a baseline: a GIN index over sync.identity_index.keys (created
#: by the benchmark only, no longer by the migrations) and the first CANDIDATE_LIMIT customers
#: sharing any key, in whatever order the scan meets them.
BASELINE_SQL = f"""
    select customer_id::text, email, phone, first_name, last_name, company, street,
           postal_code, city, birth_date from sync.identity_index
    where keys && %s::text[] and customer_id <> all(%s::uuid[]) limit {CANDIDATE_LIMIT}"""


async def baseline_candidates(conn: Any, person: Person) -> list[Candidate]:
    keys = blocking_keys(person)
    if not keys:
        return []
    cursor = await conn.execute(BASELINE_SQL, (keys, []))
    return [Candidate(row[0], Person(*row[1:])) for row in await cursor.fetchall()]


def _latency(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(_percentile(values, 0.5), 2),
        "p95": round(_percentile(values, 0.95), 2),
        "p99": round(_percentile(values, 0.99), 2),
        "max": round(max(values), 2),
        "mean": round(statistics.fmean(values), 2),
    }


async def _time_matching(
    dsn: str,
    fetch: Callable[[Any, Person], Any],
    queries: list[tuple[Person, set[str]]],
    thresholds: Thresholds,
    warmup: int,
) -> tuple[dict[str, Any], list[float]]:
    """candidates (`fetch`) + match per record, timed after `warmup` untimed records; the
    summary and each timed record's latency (ms)."""
    import psycopg

    latencies, query_ms, sizes, tally = [], [], [], Tally()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for person, _ in queries[:warmup]:
            match(person, await fetch(conn, person), thresholds)
        for person, truth in queries[warmup:]:
            t0 = time.perf_counter()
            found = await fetch(conn, person)
            t1 = time.perf_counter()
            verdict = match(person, found, thresholds)
            t2 = time.perf_counter()
            latencies.append((t2 - t0) * 1000)
            query_ms.append((t1 - t0) * 1000)
            sizes.append(len(found))
            tally.add("duplicate" if truth else "new_person", verdict, truth)
            if truth:
                tally.by_kind["true_customer_in_candidates"][
                    str(any(c.customer_id in truth for c in found))
                ] += 1
    positives = sum(1 for _, truth in queries[warmup:] if truth)
    summary = {
        "records": len(latencies),
        "latency_ms": _latency(latencies),
        "query_ms": {
            "p50": round(_percentile(query_ms, 0.5), 2),
            "p95": round(_percentile(query_ms, 0.95), 2),
        },
        "mean_candidates": round(statistics.fmean(sizes), 2),
        "capped_share": round(sum(s == CANDIDATE_LIMIT for s in sizes) / len(sizes), 4),
        "verdicts": tally.summary(positives),
    }
    return summary, latencies


def _load(dsn: str, rows: Iterable[tuple[Any, ...]]) -> dict[str, Any]:
    """Bulk-load the migrated schema: COPY into sync.identity_index with the identity_keys_sync
    trigger disabled (a million row-by-row trigger calls would dominate the load), then fill
    sync.identity_keys with the trigger's own insert for all rows at once, in key order,
    re-enable the trigger and VACUUM ANALYZE both tables. Seconds per step."""
    import psycopg

    seconds: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set work_mem = '512MB'")
        conn.execute("alter table sync.identity_index disable trigger identity_keys_sync")
        t0 = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
            for row in rows:
                copy.write_row(row)
        seconds["generate_and_copy"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        conn.execute(
            "insert into sync.identity_keys (key, customer_id)"
            " select distinct k, customer_id from sync.identity_index, unnest(keys) k"
            " order by 1, 2"
        )
        seconds["fill_identity_keys"] = time.perf_counter() - t0
        conn.execute("alter table sync.identity_index enable trigger identity_keys_sync")
        t0 = time.perf_counter()
        conn.execute("vacuum analyze sync.identity_index")
        conn.execute("vacuum analyze sync.identity_keys")
        seconds["vacuum_analyze"] = time.perf_counter() - t0
    return {k: round(v, 1) for k, v in seconds.items()}


def _plan(dsn: str, sql: str, person: Person) -> list[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        explain = f"explain (analyze, buffers) {sql}"
        return [row[0] for row in conn.execute(explain, (blocking_keys(person), []))]


def _others() -> dict[str, Any]:
    """What else the machine is doing: load average and any test suite running."""
    found = subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True)
    return {
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "pytest_processes": len(found.stdout.splitlines()),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def speed(
    seed: int, customers: int, count: int, thresholds: Thresholds, baseline_count: int
) -> dict[str, Any]:
    """The pipeline's own path (`crmsync.identity.candidates` + `match`) against `customers`
    loaded into the migrated schema, then the previous design on the first `baseline_count`
    of the same records."""
    import psycopg

    from canonical_db import apply_migrations
    from crmsync.identity import _CANDIDATES_SQL, candidates
    from crmsync.postgres import LocalPostgres

    started, others_before = time.perf_counter(), _others()
    g = People(seed)
    pools = make_pools(g, 4000)
    duplicates = int(count * 0.6)
    sample = set(g.rng.sample(range(customers), duplicates))
    kept: list[tuple[str, str, dict[str, Any]]] = []

    def rows() -> Iterator[tuple[Any, ...]]:
        for i, (locale, values) in enumerate(pooled_people(g, pools, customers)):
            customer_id = str(uuid.UUID(int=g.rng.getrandbits(128), version=4))
            if i in sample:
                kept.append((customer_id, locale, values))
            person = person_of(values)
            yield (customer_id, *person.row(), blocking_keys(person))

    with tempfile.TemporaryDirectory(prefix="ident-bench-") as state:
        cluster = LocalPostgres(Path(state), _free_port())
        cluster.start()
        try:
            apply_migrations(cluster.dsn)
            load = _load(cluster.dsn, rows())
            queries = [(_person(duplicate(g, loc, v)[0]), {cid}) for cid, loc, v in kept]
            queries += [(_person(g.person()[1]), set()) for _ in range(count - duplicates)]
            g.rng.shuffle(queries)
            warmup, baseline_warmup = 500, 20
            queries = [(_person(g.person()[1]), set()) for _ in range(warmup)] + queries
            example = next(person for person, truth in reversed(queries) if truth)

            pipeline, latencies = asyncio.run(
                _time_matching(cluster.dsn, candidates, queries, thresholds, warmup)
            )
            pipeline_plan = _plan(cluster.dsn, _CANDIDATES_SQL, example)
            with psycopg.connect(cluster.dsn, autocommit=True) as conn:
                sizes = conn.execute(
                    "select pg_table_size('sync.identity_index'),"
                    " pg_indexes_size('sync.identity_index'),"
                    " pg_table_size('sync.identity_keys'), pg_indexes_size('sync.identity_keys'),"
                    " (select count(*) from sync.identity_keys), version(),"
                    " current_setting('shared_buffers')"
                ).fetchone()
                assert sizes is not None
                conn.execute("set maintenance_work_mem = '1GB'")
                t0 = time.perf_counter()
                conn.execute(
                    "create index identity_index_keys on sync.identity_index using gin (keys)"
                )
                gin_seconds = time.perf_counter() - t0
                conn.execute("analyze sync.identity_index")
                gin_size = conn.execute(
                    "select pg_relation_size('sync.identity_index_keys')"
                ).fetchone()
                assert gin_size is not None

            subset = queries[:baseline_warmup] + queries[warmup : warmup + baseline_count]
            baseline, baseline_latencies = asyncio.run(
                _time_matching(
                    cluster.dsn, baseline_candidates, subset, thresholds, baseline_warmup
                )
            )
            baseline_plan = _plan(cluster.dsn, BASELINE_SQL, example)
        finally:
            cluster.stop()
    same_records = _latency(latencies[: len(baseline_latencies)])
    baseline["pipeline_same_records_latency_ms"] = same_records
    baseline["gin_index_seconds"] = round(gin_seconds, 1)
    baseline["gin_index_mb"] = round(gin_size[0] / 2**20, 1)
    mb = 2**20
    return {
        "seed": seed,
        "customers": customers,
        "queries": count,
        "warmup_queries": warmup,
        "candidate_limit": CANDIDATE_LIMIT,
        "load_seconds": load,
        "identity_index_mb": {"table": round(sizes[0] / mb, 1), "indexes": round(sizes[1] / mb, 1)},
        "identity_keys_mb": {"table": round(sizes[2] / mb, 1), "indexes": round(sizes[3] / mb, 1)},
        "identity_keys_rows": sizes[4],
        "postgres": sizes[5],
        "shared_buffers": sizes[6],
        "conditions": "schema by canonical_db.apply_migrations (0007: sync.identity_keys kept by"
        " the identity_keys_sync trigger, no GIN index); bulk load: COPY into"
        " sync.identity_index with that trigger disabled, sync.identity_keys filled by one"
        " insert ... select distinct ... order by key, customer_id (so its primary key is"
        " built in key order, more compact than one grown row by row), trigger re-enabled,"
        " VACUUM ANALYZE; one psycopg AsyncConnection over TCP loopback, autocommit, warm"
        f" cache after {warmup} untimed records; latency = crmsync.identity.candidates + match"
        " per record; 60% corrupted duplicates of loaded customers, 40% new people. Baseline:"
        " the previous design (GIN index over identity_index.keys, created after the pipeline"
        f" run, and BASELINE_SQL) on the first {baseline_count} of the same timed records"
        f" after {baseline_warmup} untimed",
        "others_running": {"before": others_before, "after": _others()},
        "seconds": round(time.perf_counter() - started, 1),
        "pipeline": pipeline,
        "baseline": baseline,
        "ratio_baseline_to_pipeline": {
            p: round(baseline["latency_ms"][p] / same_records[p], 1) for p in ("p50", "p95")
        },
        "plans": {"pipeline": pipeline_plan, "baseline": baseline_plan},
    }


# --- results ---------------------------------------------------------------------------------


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Identity matching benchmark",
        "",
        "Written by `make bench-identity` (`python -m bench.identity quality|speed`).",
        "",
    ]
    m = results.get("machine", {})
    lines += [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_mb')} MB;"
        f" {m.get('platform')}; Python {m.get('python')}; {m.get('libraries')};"
        f" crmsync {m.get('commit')}.",
        "",
    ]
    if q := results.get("quality"):
        lines += [
            f"## Quality (seed {q['seed']}, {q['canonical']['customers']} canonical"
            f" customers, thresholds {q['thresholds']})",
            "",
            "| task | records | true duplicates | precision | recall | review | new |",
            "|---|---|---|---|---|---|---|",
        ]
        for task in ("link", "merge"):
            r = q[task]
            lines.append(
                f"| {task} | {r['records']} | {r['duplicates']} | {r['precision']} |"
                f" {r['recall']} | {r['review_share']} | {r['new_share']} |"
            )
        lines += [
            "",
            f"Merge pairs: {q['merge']['pairs']}. Candidates per record: mean"
            f" {q['mean_candidates']}, max {q['max_candidates']} ({q['candidates']}).",
            "",
        ]
    if s := results.get("speed"):
        lines += _speed_markdown(s)
    return "\n".join(lines)


def _speed_markdown(s: dict[str, Any]) -> list[str]:
    index, keys = s["identity_index_mb"], s["identity_keys_mb"]
    others = s["others_running"]
    lines = [
        f"## Speed (seed {s['seed']}, {s['customers']:,} customers)",
        "",
        f"{s['postgres']}; shared_buffers {s['shared_buffers']}.",
        "",
        f"Conditions: {s['conditions']}.",
        "",
        f"Also running on the machine: before {others['before']}, after {others['after']}"
        " (pytest_processes: test-suite processes seen by `pgrep -af pytest`).",
        "",
        f"Load (s): {s['load_seconds']}. sync.identity_index {index['table']} MB + indexes"
        f" {index['indexes']} MB; sync.identity_keys ({s['identity_keys_rows']:,} rows)"
        f" {keys['table']} MB + primary key {keys['indexes']} MB. Whole run {s['seconds']} s.",
        "",
        "| path | records | p50 ms | p95 ms | p99 ms | max ms | mean candidates |"
        " true customer in candidates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    b = s["baseline"]
    for name, r in (
        ("pipeline: candidates + match (sync.identity_keys)", s["pipeline"]),
        ("previous design: GIN on identity_index.keys (baseline)", b),
    ):
        lat = r["latency_ms"]
        found = r["verdicts"]["by_kind"].get("true_customer_in_candidates", {})
        lines.append(
            f"| {name} | {r['records']} | {lat['p50']} | {lat['p95']} | {lat['p99']} |"
            f" {lat['max']} | {r['mean_candidates']} | {found} |"
        )
    same, ratio = b["pipeline_same_records_latency_ms"], s["ratio_baseline_to_pipeline"]
    lines += [
        "",
        f"On the baseline's {b['records']} records the pipeline took p50 {same['p50']} ms,"
        f" p95 {same['p95']} ms; the previous design's latency is {ratio['p50']} times the"
        f" pipeline's at p50, {ratio['p95']} times at p95. Its GIN index took"
        f" {b['gin_index_seconds']} s to build,"
        f" {b['gin_index_mb']} MB.",
        "",
    ]
    for name, plan in s["plans"].items():
        lines += [f"Plan, {name}:", "", "```", *plan, "```", ""]
    return lines


def _write(section: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "identity.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = machine(LIBRARIES)
    results[section] = result
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "identity.md").write_text(_markdown(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=["quality", "speed"])
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--people", type=int, default=20_000, help="quality: canonical people")
    parser.add_argument("--incoming", type=int, default=10_000, help="quality: records matched")
    parser.add_argument("--customers", type=int, default=1_000_000, help="speed: index size")
    parser.add_argument("--queries", type=int, default=5_000, help="speed: records matched")
    parser.add_argument(
        "--baseline-queries", type=int, default=300, help="speed: records through the GIN baseline"
    )
    args = parser.parse_args(argv)
    thresholds = Thresholds()
    if args.what == "quality":
        result = quality(args.seed, args.people, args.incoming, thresholds)
        print(json.dumps({k: result[k] for k in ("link", "merge")}, indent=1)[:3000])
    else:
        result = speed(args.seed, args.customers, args.queries, thresholds, args.baseline_queries)
        print(json.dumps({k: v for k, v in result.items() if k != "plans"}, indent=1)[:4000])
    _write(args.what, result)


if __name__ == "__main__":
    main()
