"""The rules that decide what a change means: plain functions over plain data, with no Faust,
HTTP or database import. `decide.apply(state, change, rules, now)` is the heart of it."""

from crmsync.domain.customer import GoldenRecord, normalise_customer
from crmsync.domain.decide import Command, CustomerState, Decision, GoldenChange, apply
from crmsync.domain.events import CustomerChange, parse_customer_event

__all__ = [
    "Command",
    "CustomerChange",
    "CustomerState",
    "Decision",
    "GoldenChange",
    "GoldenRecord",
    "apply",
    "normalise_customer",
    "parse_customer_event",
]
