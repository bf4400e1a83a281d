"""Who a record is: matching a person against canonical customers.

Pure: plain data in, a verdict out. The database edge (crmsync.identity) keeps an index of
every live customer's `Person` and its blocking keys, fetches the customers sharing a key with
an incoming record, and hands them here. So the work per record depends on how many
customers share its keys, never on how many customers there are.

A record is matched in order: the same normalised email (unless a name or birth date
disagrees), then the same E.164 phone (only with a first name or birth date that agrees:
households share landlines); then a score over everything (`score`): Fellegi-Sunter style,
each field's agreement or disagreement adds or takes away evidence (bits), and the sum becomes
a probability. At or above `auto_link` the record is linked if something personal agrees (not
only the surname, address and phone a household shares) and no other plausible candidate is
someone else; in the review band, or in doubt, a person decides; below it, it is someone new.
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
from rapidfuzz.distance import OSA, JaroWinkler

from crmsync.domain.customer import GoldenRecord

__all__ = [
    "Candidate",
    "Match",
    "Person",
    "Thresholds",
    "blocking_keys",
    "email_collision",
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
_NOT_DIGITS = re.compile(r"\D")
#: Street words written short, as postal services list them.
_STREET_WORDS = {
    "st": "street", "str": "strasse", "rd": "road", "ave": "avenue", "av": "avenue",
    "blvd": "boulevard", "ln": "lane", "dr": "drive", "ct": "court", "pl": "place",
    "sq": "square", "hwy": "highway", "pkwy": "parkway", "ter": "terrace", "cres": "crescent",
    "apt": "apartment", "ste": "suite", "fl": "floor", "n": "north", "s": "south",
    "e": "east", "w": "west", "bd": "boulevard", "all": "allee", "ch": "chemin",
    "imp": "impasse", "rte": "route",
}  # fmt: skip
#: German streets run the word on: "Hauptstr." is "Hauptstraße".
_STRASSE = re.compile(r"(?<=\w)str$")
_NICKNAMES = NickNamer()


def _fold(text: str | None) -> str:
    """Lower case, no accents or punctuation, single spaces: how people compare names."""
    if not text:
        return ""
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return _SPACES.sub(" ", _PUNCTUATION.sub(" ", plain.casefold())).strip()


def _street(text: str | None) -> str:
    return " ".join(
        _STRASSE.sub("strasse", _STREET_WORDS.get(word, word)) for word in _fold(text).split()
    )


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
    share one. Each is narrow (a block is a person or a household) and together they survive
    any one corrupted or missing field: a changed email still meets the phone, a typo in a
    surname still meets the first name's sound with the postcode or birth date, a new address
    still meets a name with the birth date. A name's sound is keyed the same whether it is the
    first or the last name, so swapped names meet too."""
    p = person
    sounds = sorted({s for s in (_sound(_given(p.first_name)), _sound(p.last_name)) if s})
    keys = []
    if p.email:
        keys.append(f"e:{p.email}")
    if p.phone:
        keys.append(f"p:{p.phone}")
    for sound in sounds:
        if p.birth_date:
            keys.append(f"nb:{sound}:{p.birth_date}")
        if p.postal_code:
            keys.append(f"nz:{sound}:{p.postal_code}")
    if p.birth_date and p.postal_code:
        keys.append(f"bz:{p.birth_date}:{p.postal_code}")
    return keys


@dataclass(frozen=True, slots=True)
class Scored:
    confidence: float
    bits: float
    #: Both sides hold a first name, surname or birth date and they differ: never auto-linked.
    conflict: bool
    #: Something only this person has agrees (first name, birth date or email), not just what
    #: a household shares (surname, address, landline): needed before a link.
    personal: bool = True


def _given(first_name: str) -> str:
    return first_name.split(" ")[0] if first_name else ""


def _one_slip(a: str, b: str) -> bool:
    """A typo apart: one letter added, dropped, replaced or two swapped (or nearly the same
    spelling, as Jaro-Winkler has it for longer names)."""
    return (min(len(a), len(b)) >= 3 and OSA.distance(a, b) <= 1) or (
        min(len(a), len(b)) >= 5 and JaroWinkler.similarity(a, b) >= 0.92
    )


def _first_names(a: str, b: str) -> tuple[float, bool, bool]:
    """(bits, conflict, personal) for two first names."""
    a0, b0 = _given(a), _given(b)
    if a0 == b0:
        return (5.0, False, True) if len(a0) > 1 else (1.0, False, False)
    if b0 in _names_like(a0) or a0 in _names_like(b0):
        return 3.5, False, True
    if _one_slip(a0, b0):
        return 3.0, False, True
    if (len(a0) == 1 or len(b0) == 1) and a0[0] == b0[0]:
        return 1.0, False, False  # an initial: the household's other "J." too
    if OSA.distance(a0, b0) <= 1 or JaroWinkler.similarity(a0, b0) >= 0.88:
        return 0.0, False, False  # too short or too far to call it a typo, too close to deny
    return -8.0, True, False


def _last_names(a: str, b: str) -> tuple[float, bool]:
    if a == b:
        return 5.0, False
    if _one_slip(a, b) or _sound(a) == _sound(b):
        return 3.0, False
    if JaroWinkler.similarity(a, b) >= 0.8:
        return 0.0, False
    return -6.0, True


def _names(a: Person, b: Person) -> tuple[float, bool, bool]:
    """The name evidence, the better of as written and with first and last swapped."""
    best = (-100.0, True, False)
    for first, last in ((b.first_name, b.last_name), (b.last_name, b.first_name)):
        bits, conflict, personal = 0.0, False, False
        if a.first_name and first:
            bits, conflict, personal = _first_names(a.first_name, first)
        if a.last_name and last:
            more, clash = _last_names(a.last_name, last)
            bits, conflict = bits + more, conflict or clash
        if bits > best[0]:
            best = (bits, conflict, personal)
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


def _emails(a: str, b: str) -> float:
    if a == b:
        return 9.0
    local_a, _, domain_a = a.partition("@")
    local_b, _, domain_b = b.partition("@")
    if local_a == local_b or (domain_a == domain_b and OSA.distance(local_a, local_b) <= 1):
        return 4.0  # the same name at another provider, or a typo
    return -1.0  # people have several addresses


def _address(a: Person, b: Person) -> float:
    bits = 0.0
    if a.postal_code and b.postal_code:
        bits += 2.5 if a.postal_code == b.postal_code else -0.5
    if a.street and b.street:
        similarity = fuzz.token_sort_ratio(a.street, b.street)
        bits += 3.0 if similarity >= 90 else 1.0 if similarity >= 75 else -0.5
    if a.city and b.city and a.city == b.city:
        bits += 1.0
    return bits


def score(a: Person, b: Person) -> Scored:
    """How likely `a` and `b` are one person, from every field both hold."""
    bits, conflict, personal = _names(a, b)
    numbers_a = _NOT_DIGITS.sub("", a.first_name + a.last_name)
    if numbers_a != _NOT_DIGITS.sub("", b.first_name + b.last_name):
        bits, conflict = bits - 8.0, True  # "Unit 2" is not "Unit 3", nor "Test1" "Test2"
    if a.email and b.email:
        more = _emails(a.email, b.email)
        bits, personal = bits + more, personal or more > 0
    if a.phone and b.phone:
        if a.phone == b.phone:
            bits += 7.0
        else:
            bits += 3.0 if a.phone[-7:] == b.phone[-7:] else -1.0
    if a.birth_date and b.birth_date:
        more, clash = _birth_dates(a.birth_date, b.birth_date)
        bits, conflict, personal = bits + more, conflict or clash, personal or more > 0
    bits += _address(a, b)
    if a.company and b.company and fuzz.token_set_ratio(a.company, b.company) >= 90:
        bits += 1.5
    confidence = 1.0 / (1.0 + 2.0 ** (PRIOR_BITS - bits))
    return Scored(round(confidence, 4), bits, conflict, personal)


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


def _linkable(s: Scored) -> bool:
    return not s.conflict and s.personal


def _one_person(scored: list[tuple[Scored, Candidate]]) -> bool:
    """Whether these candidates (best first) are all the best one: the same customer entered
    twice is a duplicate to merge, not a doubt about who the record is."""
    best = scored[0][1].person
    return all(_linkable(s := score(best, c.person)) and s.bits >= PRIOR_BITS + 5
               for _, c in scored[1:])  # fmt: skip


def match(person: Person, candidates: list[Candidate], thresholds: Thresholds) -> Match:
    """The verdict on `person` against the customers that share a blocking key with it.

    A same email links unless a name or birth date disagrees; a same phone (households share
    landlines) only when the first name or birth date also agrees. Otherwise the best score
    links at `auto_link` if it is personal evidence, not just a shared surname, address and
    phone, and no other plausible candidate is someone else; a doubt goes to review."""
    scored = sorted(
        ((score(person, c.person), c) for c in candidates),
        key=lambda sc: sc[0].bits,
        reverse=True,
    )
    likely = tuple((c.customer_id, s.confidence) for s, c in scored if s.confidence >= 0.01)[:5]
    for method in ("email", "phone"):
        value = getattr(person, method)
        same = [(s, c) for s, c in scored if value and getattr(c.person, method) == value]
        fits = [(s, c) for s, c in same if not s.conflict and (s.personal or method == "email")]
        if fits and _one_person(fits):
            s, c = fits[0]
            return Match("link", c.customer_id, method, max(s.confidence, 0.99), likely)  # type: ignore[arg-type]
    if not scored or scored[0][0].confidence < thresholds.review:
        return Match("new", candidates=likely)
    best = scored[0]
    rivals = [(s, c) for s, c in scored[1:] if s.confidence >= thresholds.review and not s.conflict]
    sure = best[0].confidence >= thresholds.auto_link and _linkable(best[0])
    if sure and _one_person([best, *rivals]):
        return Match("link", best[1].customer_id, "fuzzy", best[0].confidence, likely)
    return Match("review", confidence=best[0].confidence, candidates=likely)


def email_collision(person: Person, holder: Candidate, thresholds: Thresholds) -> Match:
    """The verdict on a customer an app gave the email `holder` holds in the targets. The
    targets give an email to one customer only, so the answer is never "someone new": the
    same person (a link: merge them) when `match` links the two by that email (no name or
    birth date disagrees), anyone else to a person (review), however unlike the two look."""
    verdict = match(person, [holder], thresholds)
    if verdict.outcome == "link":
        return verdict
    confidence = score(person, holder.person).confidence
    return Match("review", confidence=confidence, candidates=((holder.customer_id, confidence),))
