"""Conflict policies: which of several concurrent values of a field wins.

A policy only ever sees *concurrent* assignments (an edit made after seeing a value has
already overwritten it, see `conflict.record`). Every policy is deterministic: the candidates
are passed oldest first by timestamp, so the same set gives the same winner on every replica.

- ``lww`` (`LastWriterWins`): the later HLC timestamp; ties break on the origin id.
- ``prefer: <app>`` (`Prefer`): the latest value written by that application, if there is one,
  else ``lww``.
- ``custom: <name>`` (`Custom`): a Python function registered with `register_resolver`, called
  as ``fn(field, candidates) -> one of candidates``.

`resolve` returns the winner, and a `Conflict` when the candidates hold different values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from conflict.record import Register

__all__ = [
    "Conflict",
    "Custom",
    "LastWriterWins",
    "Policy",
    "Prefer",
    "Resolver",
    "UnknownPolicy",
    "register_resolver",
    "resolve",
    "resolver",
]

Resolver = Callable[[str, Sequence[Register]], Register]
"""A custom policy: ``fn(field, candidates)`` returns one of ``candidates``."""

_RESOLVERS: dict[str, Resolver] = {}


class UnknownPolicy(LookupError):
    """A policy or resolver name that is not known."""


def register_resolver(name: str, fn: Resolver | None = None) -> Any:
    """Register ``fn`` as the custom policy ``name``. Usable as a decorator.

    Registering the same function twice is harmless; a different function under a taken name
    is refused, so two modules cannot silently replace each other's rule.
    """

    def add(f: Resolver) -> Resolver:
        existing = _RESOLVERS.get(name)
        if existing is not None and existing is not f:
            raise ValueError(f"a different resolver is already registered as {name!r}")
        _RESOLVERS[name] = f
        return f

    return add(fn) if fn is not None else add


def resolver(name: str) -> Resolver:
    """The registered resolver ``name``; also accepts ``"package.module:function"``."""
    fn = _RESOLVERS.get(name)
    if fn is not None:
        return fn
    if ":" in name:
        import importlib

        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UnknownPolicy(f"cannot import resolver {name!r}: {exc}") from exc
        if not callable(fn):
            raise UnknownPolicy(f"resolver {name!r} is not callable")
        return fn  # type: ignore[no-any-return]
    known = ", ".join(sorted(_RESOLVERS)) or "none registered"
    raise UnknownPolicy(f"no resolver registered as {name!r} (known: {known})")


@dataclass(frozen=True)
class Conflict:
    """Concurrent, different values of one field and how they were decided.

    ``candidates`` are oldest first; ``winner`` is one of them; ``rule`` names the policy.
    The engine adds the map name and record key when it logs one.
    """

    field: str
    candidates: tuple[Register, ...]
    winner: Register
    rule: str


class Policy:
    """Base class: ``choose(field, candidates)`` picks one of the (oldest first) candidates."""

    rule = "policy"

    def choose(self, field: str, candidates: Sequence[Register]) -> Register:
        raise NotImplementedError


class LastWriterWins(Policy):
    rule = "lww"

    def choose(self, field: str, candidates: Sequence[Register]) -> Register:
        return candidates[-1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LastWriterWins)

    def __hash__(self) -> int:
        return hash(self.rule)


class Prefer(Policy):
    def __init__(self, app: str) -> None:
        self.app = app
        self.rule = f"prefer:{app}"

    def choose(self, field: str, candidates: Sequence[Register]) -> Register:
        for candidate in candidates[::-1]:
            if candidate.ts.origin == self.app:
                return candidate
        return candidates[-1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prefer) and other.app == self.app

    def __hash__(self) -> int:
        return hash(self.rule)


class Custom(Policy):
    def __init__(self, name: str, fn: Resolver | None = None) -> None:
        self.name = name
        self.rule = f"custom:{name}"
        self._fn = fn

    @property
    def fn(self) -> Resolver:
        if self._fn is None:
            self._fn = resolver(self.name)
        return self._fn

    def choose(self, field: str, candidates: Sequence[Register]) -> Register:
        winner = self.fn(field, tuple(candidates))
        if winner not in candidates:
            raise ValueError(
                f"resolver {self.name!r} returned {winner!r} for field {field!r}, "
                "which is not one of its candidates"
            )
        return winner


LWW = LastWriterWins()


def resolve(
    field: str, candidates: Sequence[Register], policy: Policy
) -> tuple[Register, Conflict | None]:
    """The winning register among concurrent ``candidates`` (oldest first, at least one), and
    the conflict if their values differ."""
    if len(candidates) == 1:
        return candidates[0], None
    first = candidates[0].value
    if all(r.value == first for r in candidates):
        # Concurrent edits that agree are not a conflict; the latest carries the value.
        return candidates[-1], None
    winner = policy.choose(field, candidates)
    return winner, Conflict(field, tuple(candidates), winner, policy.rule)
