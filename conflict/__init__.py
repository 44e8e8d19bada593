"""The merge core of dualsync: clocks, field registers, record merge and conflict policies.

Pure Python: no I/O, no Ray, no clock reads (time is passed in).
"""

from conflict.clock import Dot, DotContext, HybridClock, Ordering, Timestamp, VectorClock
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
from conflict.record import Assign, Edit, FieldState, RecordState, Register

__all__ = [
    "LWW",
    "Assign",
    "Conflict",
    "Custom",
    "Dot",
    "DotContext",
    "Edit",
    "FieldState",
    "HybridClock",
    "LastWriterWins",
    "Ordering",
    "Policy",
    "Prefer",
    "RecordState",
    "Register",
    "Resolver",
    "Timestamp",
    "UnknownPolicy",
    "VectorClock",
    "register_resolver",
    "resolve",
    "resolver",
]
