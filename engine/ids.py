"""Small typed identities and the state enums."""

from __future__ import annotations

import enum
import re
from typing import Any, NewType

__all__ = ["AppName", "Direction", "MapName", "Mode", "RecordKey", "Side", "check_name"]

MapName = NewType("MapName", str)
AppName = NewType("AppName", str)
RecordKey = tuple[Any, ...]
"""A record's key: the key field values in the map's canonical (left) key order."""

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


def check_name(kind: str, name: str) -> str | None:
    """None if ``name`` is usable as a map or app name, else the problem.

    Names end up in table and trigger names inside the applications, hence the strict form.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        return (
            f"{kind} name {name!r} must start with a letter and hold only letters, digits and "
            "'_' (at most 63 characters)"
        )
    return None


class Side(enum.IntEnum):
    """Which side of a map. An int so it can index per-side lists on the hot path."""

    LEFT = 0
    RIGHT = 1

    @property
    def other(self) -> Side:
        return Side(1 - self)

    @property
    def label(self) -> str:
        return self.name.lower()


class Mode(enum.StrEnum):
    PLAY = "play"
    PAUSE = "pause"


class Direction(enum.StrEnum):
    BOTH = "both"
    LEFT_TO_RIGHT = "left_to_right"
    RIGHT_TO_LEFT = "right_to_left"

    def sources(self) -> tuple[Side, ...]:
        """The sides whose edits of the field are synced."""
        if self is Direction.BOTH:
            return (Side.LEFT, Side.RIGHT)
        return (Side.LEFT,) if self is Direction.LEFT_TO_RIGHT else (Side.RIGHT,)

    def targets(self) -> tuple[Side, ...]:
        """The sides that receive the field's merged value."""
        return tuple(side.other for side in self.sources())
