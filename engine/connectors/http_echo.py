"""Which reported record states are changes and which are our own echo: the HTTP connector's
capture rules, sans I/O (`engine.connectors.http_inbox` stores their inputs and outcomes).

Per record the inbox keeps ``prev`` (the *shadow*: the last image the application was seen
to hold) and ``pending``: our writes to it that the application has not reported back yet,
oldest first (`Written`: the values written, or None for a delete; the fetch ticket at which
the write completed, or None while it is in flight). The state the record has after pending
write *j* is the writes up to *j* applied in turn (`cumulative`).

The application reports ``cur`` (the record's image now, or None if gone), by a poll (a
listing fetched with a *ticket*: tickets are taken from one counter before a fetch and when a
write batch completes, so a listing whose ticket is above a write's was fetched after that
write completed) or by a webhook event (events come in the order the changes happened,
ours included). `decide` returns the change to log, whether the shadow becomes ``cur``, and
the writes still pending:

- nothing pending: an ordinary change from ``prev`` to ``cur`` (none if equal).
- ``cur`` is the state after pending write *j*: the echo of writes up to *j*, which are
  settled. Nothing is logged but what the application changed meanwhile in fields we did not
  write (a change from the state after our write). A poll takes the latest such *j* (it sees
  a state, the last one wins), an event the earliest (echoes come in order).
- otherwise, **poll**: if the listing was fetched after the last pending write completed,
  the application changed the record after our writes: a change from the state after them,
  and they are settled. Otherwise it cannot tell which came first: the record is left alone
  (shadow and pending unchanged) for a later poll.
- otherwise, **webhook**: the event comes before the echo of the oldest pending write, so
  the change happened before that write landed. If no pending write has completed, it is
  logged as it is (it lands below their positions). If some have, their positions are taken
  already: it is logged as the application holds it with those writes on top, from the
  state after them (what it did to fields we did not write is kept, the rest was overwritten
  by our writes, as it was at the application).

A pending write counts for `IN_FLIGHT_TTL_MS` while in flight (a writer that died) and, in
webhook mode, `ECHO_TTL_MS` once completed (an application that does not report our own
writes); then it is forgotten.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "ECHO_TTL_MS",
    "IN_FLIGHT_TTL_MS",
    "Change",
    "Written",
    "cumulative",
    "decide",
    "diff",
]

ECHO_TTL_MS = 60_000
IN_FLIGHT_TTL_MS = 600_000

Image = tuple[Any, ...]


class Written(NamedTuple):
    """One write of ours to a record, until the application reports it back."""

    op: str  # "I" (all values), "U" (some values) or "D"
    values: dict[int, Any] | None  # by column index; None for a delete
    done: int | None  # the ticket at which its batch completed; None while in flight
    at_ms: int  # when it was sent (in flight) or completed
    batch: str  # the batch it belongs to, and its place there ("<batch>/<entry>")


class Change(NamedTuple):
    op: str
    old: Image | None
    new: Image | None


def diff(old: Image | None, new: Image | None) -> Change | None:
    if old is None:
        return None if new is None else Change("I", None, new)
    if new is None:
        return Change("D", old, None)
    return None if old == new else Change("U", old, new)


class State(NamedTuple):
    """What a record holds after some of our writes: ``values`` (by column; None: deleted)
    and ``whole`` (they are every column: the record is known without its prior image)."""

    values: dict[int, Any] | None
    whole: bool


def cumulative(pending: list[Written], width: int) -> list[State]:
    """The state after each pending write, applying them in turn."""
    out: list[State] = []
    values: dict[int, Any] | None = {}
    whole = False
    for w in pending:
        if w.values is None:
            values, whole = None, True
        elif w.op == "I" or values is None:
            values, whole = dict(w.values), len(w.values) >= width
        else:
            values = {**values, **w.values}
        out.append(State(values, whole))
    return out


def overlay(image: Image | None, state: State, width: int) -> Image | None:
    """``image`` with ``state`` on top (None: no record, or not known whole)."""
    if state.values is None:
        return None
    if image is None:
        return tuple(state.values[i] for i in range(width)) if state.whole else None
    return tuple(state.values.get(i, v) for i, v in enumerate(image))


def matches(cur: Image | None, state: State) -> bool:
    if state.values is None:
        return cur is None
    return cur is not None and all(cur[i] == v for i, v in state.values.items())


def _alive(w: Written, now_ms: int, pushed: bool) -> bool:
    if w.done is None:
        return now_ms - w.at_ms <= IN_FLIGHT_TTL_MS
    return not pushed or now_ms - w.at_ms <= ECHO_TTL_MS


def decide(
    prev: Image | None,
    cur: Image | None,
    pending: list[Written],
    *,
    width: int,
    now_ms: int,
    ticket: int | None = None,
    old: Image | None = None,
    fallback: Image | None = None,
) -> tuple[Change | None, bool, list[Written]]:
    """Apply the module's rules to one reported record.

    ``ticket`` is the poll's fetch ticket (None for a webhook event). A webhook event's old
    image is ``old`` (the one it sent), else the shadow, else ``fallback`` (for a delete: the
    record it sent). Returns the change to log, whether the shadow becomes ``cur``, and the
    writes still pending.
    """
    pushed = ticket is None
    before = (
        (old if old is not None else prev if prev is not None else fallback) if pushed else prev
    )
    live = [w for w in pending if _alive(w, now_ms, pushed)]
    if not live:
        return diff(before, cur), True, []
    states = cumulative(live, width)
    hits = [j for j, state in enumerate(states) if matches(cur, state)]
    if hits:
        j = hits[0] if pushed else hits[-1]
        # NOTE: a record we created without every field has no prior image: what the app
        # put in the other fields is not an edit (our writes are never captured).
        base = overlay(prev if prev is not None else cur, states[j], width)
        return diff(base, cur), True, live[j + 1 :]
    if not pushed:
        last = live[-1]
        if last.done is not None and ticket is not None and ticket > last.done:
            return diff(overlay(prev, states[-1], width), cur), True, []
        return None, False, live
    completed = [j for j, w in enumerate(live) if w.done is not None]
    if not completed:
        return diff(before, cur), True, live
    state = states[completed[-1]]
    return diff(overlay(prev, state, width), overlay(cur, state, width)), True, live
