"""Who a record is: matching a person against canonical customers.

Pure: plain data in, a verdict out. The database edge (crmsync.identity) keeps an index of
every live customer's `Person` and its blocking keys, fetches the customers sharing a key with
an incoming record, and hands them here. So the work per record depends on how many
customers share its keys, never on how many customers there are.

A record is matched in order: the same normalised email, then the same E.164 phone, each
linking on its own unless the names or birth dates disagree; then a score over everything
(`score`): Fellegi–Sunter style, each field's agreement or disagreement adds or takes away
evidence (bits), and the sum becomes a probability. At or above `auto_link` the record is
linked; in the review band a person decides; below it, it is someone new.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import jellyfish
from nicknames import NickNamer
from rapidfuzz import fuzz
from rapidfuzz.distance import JaroWinkler

from crmsync.domain.customer import GoldenRecord

__all__ = [
    "Candidate",
    "Match",
    "Person",
    "Thresholds",
    "blocking_keys",
    "match",
    "person_of",
    "score",
]

MatchMethod = Literal["email", "phone", "fuzzy"]
Outcome = Literal["link", "review", "new"]

#: Evidence (bits) needed before a score says "the same person" at even odds: two customers
#: picked from one block are almost always different people.
PRIOR_BITS = 10.0

_PUNCTUATION = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")
#: Street words written short, as postal services list them.
_STREET_WORDS = {
    "st": "street", "str": "street", "rd": "road", "ave": "avenue", "av": "avenue",
    "blvd": "boulevard", "ln": "lane", "dr": "drive", "ct": "court", "pl": "place",
    "sq": "square", "hwy": "highway", "pkwy": "parkway", "ter": "terrace", "cres": "crescent",
    "apt": "apartment", "ste": "suite", "fl": "floor", "n": "north", "s": "south",
    "e": "east", "w": "west",
}  # fmt: skip
_NICKNAMES = NickNamer()


def _fold(text: str | None) -> str:
    """Lower case, no accents or punctuation, single spaces: how people compare names."""
    if not text:
        return ""
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", plain.casefold())).strip()


def _street(text: str | None) -> str:
    return " ".join(_STREET_WORDS.get(word, word) for word in _fold(text).split())


def _postal(text: str | None) -> str:
    return re.sub(r"[\s-]", "", text or "").upper()


@cache
def _names_like(first: str) -> frozenset[str]:
    """A first name with its nicknames and the names it is short for (Bob ~ Robert)."""
    if not first:
        return frozenset()
    return frozenset({first}) | _NICKNAMES.nicknames_of(first) | _NICKNAMES.canonicals_of(first)


@cache
def _sound(name: str) -> str:
    return jellyfish.metaphone(name).replace(" ", "") if name else ""


@dataclass(frozen=True, slots=True)
class Person:
    """The parts of a customer that say who they are, normalised for comparing."""

    email: str = ""
    phone: str = ""
    first_name: str = ""
    last_name: str = ""
    company: str = ""
    street: str = ""
    postal_code: str = ""
    city: str = ""
    birth_date: str = ""  # ISO

    def row(self) -> tuple[str, ...]:
        return (self.email, self.phone, self.first_name, self.last_name, self.company,
                self.street, self.postal_code, self.city, self.birth_date)  # fmt: skip


def person_of(record: GoldenRecord | dict[str, Any]) -> Person:
    """A golden record (already normalised: email, E.164 phone, ISO dates) as a `Person`."""
    get = record.get if isinstance(record, dict) else lambda f: getattr(record, f)
    return Person(
        email=(get("email") or "").casefold(),
        phone=get("phone") or "",
        first_name=_fold(get("first_name")),
        last_name=_fold(get("last_name")),
        company=_fold(get("company_name")),
        street=_street(get("street")),
        postal_code=_postal(get("postal_code")),
        city=_fold(get("city")),
        birth_date=str(get("birth_date") or ""),
    )


def blocking_keys(person: Person) -> list[str]:
    """Keys under which a person is indexed; a record is compared only with customers that
    share one. Each is narrow enough to keep blocks small and together they survive one
    corrupted or missing field: a typo in a surname still meets its birth date and postcode,
    a swapped first and last name still meets its sorted pair of sounds."""
    p = person
    first, last = _sound(p.first_name.split(" ")[0] if p.first_name else ""), _sound(p.last_name)
    keys = []
    if p.email:
        keys.append(f"e:{p.email}")
    if p.phone:
        keys.append(f"p:{p.phone}")
    if last and p.birth_date:
        keys.append(f"lb:{last}:{p.birth_date}")
    if last and p.postal_code:
        keys.append(f"lz:{last}:{p.postal_code}")
    if p.birth_date and p.postal_code:
        keys.append(f"bz:{p.birth_date}:{p.postal_code}")
    if first and last:
        keys.append("fl:" + ":".join(sorted((first, last))))
    return keys


@dataclass(frozen=True, slots=True)
class Scored:
    confidence: float
    bits: float
    #: Both sides hold a first name, surname or birth date and they differ: never auto-linked.
    conflict: bool


def _first_names(a: str, b: str) -> tuple[float, bool]:
    a0, b0 = a.split(" ")[0], b.split(" ")[0]
    if a0 == b0:
        return 4.0, False
    if b0 in _names_like(a0) or a0 in _names_like(b0):
        return 3.0, False
    if JaroWinkler.similarity(a0, b0) >= 0.9:
        return 2.5, False
    if (len(a0) == 1 or len(b0) == 1) and a0[0] == b0[0]:
        return 1.0, False  # an initial
    return -8.0, True


def _last_names(a: str, b: str) -> tuple[float, bool]:
    if a == b:
        return 5.0, False
    if JaroWinkler.similarity(a, b) >= 0.9 or _sound(a) == _sound(b):
        return 3.0, False
    return -6.0, True


def _names(a: Person, b: Person) -> tuple[float, bool]:
    """The name evidence, the better of as written and with first and last swapped."""
    best: tuple[float, bool] | None = None
    for first, last in ((b.first_name, b.last_name), (b.last_name, b.first_name)):
        bits, conflict = 0.0, False
        if a.first_name and first:
            bits, conflict = _first_names(a.first_name, first)
        if a.last_name and last:
            more, clash = _last_names(a.last_name, last)
            bits, conflict = bits + more, conflict or clash
        if best is None or bits > best[0]:
            best = (bits, conflict)
    assert best is not None
    return best


def _birth_dates(a: str, b: str) -> tuple[float, bool]:
    if a == b:
        return 6.0, False
    try:
        x, y = dt.date.fromisoformat(a), dt.date.fromisoformat(b)
    except ValueError:
        return 0.0, False
    swapped = x.year == y.year and x.month == y.day and x.day == y.month
    one_slip = sum(c != d for c, d in zip(a, b, strict=True)) == 1
    if swapped or one_slip:
        return 2.0, False  # day and month swapped, or one digit mistyped
    return -8.0, True


def score(a: Person, b: Person) -> Scored:
    """How likely `a` and `b` are one person, from every field both hold."""
    bits, conflict = _names(a, b)
    if a.email and b.email:
        bits += 9.0 if a.email == b.email else -1.0  # people have several addresses
    if a.phone and b.phone:
        if a.phone == b.phone:
            bits += 7.0
        else:
            bits += 3.0 if a.phone[-7:] == b.phone[-7:] else -1.0
    if a.birth_date and b.birth_date:
        more, clash = _birth_dates(a.birth_date, b.birth_date)
        bits, conflict = bits + more, conflict or clash
    if a.postal_code and b.postal_code:
        bits += 2.5 if a.postal_code == b.postal_code else -0.5
    if a.street and b.street:
        similarity = fuzz.token_sort_ratio(a.street, b.street)
        bits += 3.0 if similarity >= 90 else 1.0 if similarity >= 75 else -0.5
    if a.city and b.city and a.city == b.city:
        bits += 1.0
    if a.company and b.company and fuzz.token_set_ratio(a.company, b.company) >= 90:
        bits += 1.5
    confidence = 1.0 / (1.0 + 2.0 ** (PRIOR_BITS - bits))
    return Scored(round(confidence, 4), bits, conflict)


@dataclass(frozen=True, slots=True)
class Thresholds:
    auto_link: float = 0.95
    review: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 < self.review <= self.auto_link <= 1.0:
            raise ValueError("identity thresholds must satisfy 0 < review <= auto_link <= 1")


@dataclass(frozen=True, slots=True)
class Candidate:
    customer_id: str
    person: Person


@dataclass(frozen=True, slots=True)
class Match:
    """What to do with a record: link it to `customer_id`, ask a person (with the likely
    `candidates`, best first), or treat it as someone new."""

    outcome: Outcome
    customer_id: str | None = None
    method: MatchMethod | None = None
    confidence: float = 0.0
    candidates: tuple[tuple[str, float], ...] = ()


def match(person: Person, candidates: list[Candidate], thresholds: Thresholds) -> Match:
    """The verdict on `person` against the customers that share a blocking key with it."""
    scored = sorted(
        ((score(person, c.person), c) for c in candidates),
        key=lambda sc: sc[0].bits,
        reverse=True,
    )
    likely = tuple((c.customer_id, s.confidence) for s, c in scored if s.confidence >= 0.01)
    for method, key in (("email", "email"), ("phone", "phone")):
        value = getattr(person, key)
        same = [(s, c) for s, c in scored if value and getattr(c.person, key) == value]
        if len(same) == 1 and not same[0][0].conflict:
            s, c = same[0]
            return Match("link", c.customer_id, method, max(s.confidence, 0.99), likely[:5])  # type: ignore[arg-type]
    if not scored or scored[0][0].confidence < thresholds.review:
        return Match("new", candidates=likely[:5])
    best, runner_up = scored[0], scored[1] if len(scored) > 1 else None
    clear = runner_up is None or runner_up[0].confidence < thresholds.review
    if best[0].confidence >= thresholds.auto_link and not best[0].conflict and clear:
        return Match("link", best[1].customer_id, "fuzzy", best[0].confidence, likely[:5])
    return Match("review", confidence=best[0].confidence, candidates=likely[:5])
