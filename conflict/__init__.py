"""The merge core of dualsync: clocks, compact records, conflict policies.

Pure Python: no I/O, no Ray, no clock reads (time is passed in).
"""

from conflict.clock import (
    DEFAULT_TOLERANCE_MS,
    BoundedClock,
    HybridClock,
    Ordering,
    Origins,
    Timestamp,
    VectorClock,
    pack,
    stamp_after,
    unpack,
)
from conflict.policy import (
    LWW,
    Conflict,
    Custom,
    LastWriterWins,
    Policy,
    Prefer,
    Resolver,
    UnknownPolicy,
    register_resolver,
    resolve,
    resolver,
)
from conflict.record import ABSENT, EXISTS, Chooser, Edit, Entry, Record, Register, latest

__all__ = [
    "ABSENT",
    "DEFAULT_TOLERANCE_MS",
    "EXISTS",
    "LWW",
    "BoundedClock",
    "Chooser",
    "Conflict",
    "Custom",
    "Edit",
    "Entry",
    "HybridClock",
    "LastWriterWins",
    "Ordering",
    "Origins",
    "Policy",
    "Prefer",
    "Record",
    "Register",
    "Resolver",
    "Timestamp",
    "UnknownPolicy",
    "VectorClock",
    "latest",
    "pack",
    "register_resolver",
    "resolve",
    "resolver",
    "stamp_after",
    "unpack",
]
