"""Coordinator actor: the map registry, the partition assignment and each map's mode.

It owns, per map, the pipeline of actors (a writer and a reader per side, and the partitions
in between) and persists what it was asked to run in the registry, so that a restarted
coordinator rebuilds the same pipelines. A background loop reconciles: it compares each
reader's reported mode with the wanted one and corrects it, step by step; a failing step is
recorded and retried on the next round, never stopping the loop.

Every state-changing call is idempotent: submitting the same map twice, playing a map that
plays, or pausing a paused one changes nothing.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors import ray_api
from conflict import Resolver, resolver
from engine.connectors import check_url, open_connector
from engine.drift import Drift, problems, repair
from engine.errors import AppError, EngineError, MapError, SchemaError, WorkerLost
from engine.ids import Mode, Side, check_name
from engine.maps import EntityMap, check_schema, check_types, key_warnings, unique_warnings
from engine.pipeline import partition_of
from engine.store import Registry

RECONCILE_EVERY_S = 0.5
HEALTH_EVERY_S = 2.0  # how often a playing map's schemas are checked for drift


def now_ms() -> int:
    return time.time_ns() // 1_000_000


STATUS_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 120.0


@dataclass
class Pipeline:
    spec: dict[str, Any]
    emap: EntityMap
    mode: Mode
    writers: list[Any]
    partitions: list[Any]
    readers: list[Any]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # found when it was submitted
    drift: list[Drift] = field(default_factory=list)  # what keeps it from syncing; [] healthy
    drift_since_ms: int | None = None
    drifted: set[Side] = field(default_factory=set)  # sides that drifted since the last repair
    last_repair: dict[str, Any] | None = None
    checked: float = 0.0  # monotonic time of the last health check

    def actors(self) -> list[Any]:
        return [*self.readers, *self.partitions, *self.writers]

    @property
    def reader_mode(self) -> Mode:
        """The readers' mode: the wanted one, except paused while the schema drifts."""
        return Mode.PAUSE if self.drift else self.mode


class Coordinator:
    def __init__(
        self,
        state_dir: str,
        options: dict[str, Any] | None = None,
        resolvers: dict[str, Resolver] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.options = dict(options or {})
        self.resolvers: dict[str, Resolver] = dict(resolvers or {})
        self.registry = Registry(self.state_dir / "engine.sqlite")
        self.pipelines: dict[str, Pipeline] = {}
        self.loop_errors: list[str] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        for name, (spec, mode) in self.registry.maps().items():
            try:
                self._build(name, spec, Mode(mode))
            except Exception as exc:  # NOTE: one bad map must not keep the others down.
                self.loop_errors.append(f"restoring map {name!r}: {exc}")
        self._thread = threading.Thread(target=self._reconcile_loop, daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        return True

    # -- registry ------------------------------------------------------------------------

    def add_app(self, name: str, url: str) -> None:
        """Register an app, or change its URL. The URL is checked first (`check_url`).

        Changing the URL of an app a playing map uses is refused: pause the map first. The
        paused maps that use it are then checked against the new URL (schema, capture
        installed there) and re-targeted to it; their positions in the app's change log are
        kept, so the new URL must reach the same database (a moved server, a new password).
        """
        problem = check_name("app", name)
        if problem:
            raise AppError(name, problem)
        check_url(name, url)
        with self._lock:
            current = self.registry.urls().get(name)
            if current == url:
                return
            users = [
                p for p in self.pipelines.values() if name in (p.emap.left.app, p.emap.right.app)
            ]
            playing = sorted(p.emap.name for p in users if p.mode is Mode.PLAY)
            if playing:
                raise AppError(
                    name,
                    f"its URL cannot change while map(s) {', '.join(map(repr, playing))} play:"
                    " pause them first, then change the URL",
                )
            urls = {**self.registry.urls(), name: url}
            for p in users:
                self._install(p.emap, urls)
            self.registry.put_app(name, url)
            for p in users:
                self._teardown(self.pipelines.pop(p.emap.name))
                self._build(p.emap.name, p.spec, p.mode)

    def apps(self) -> dict[str, str]:
        """The apps and their URLs, inline passwords shown as ``***``."""
        return self.registry.apps()

    def add_resolver(self, name: str, fn: Resolver) -> None:
        self.resolvers[name] = fn

    def submit_map(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Validate a map against the apps and their schemas, then (re)build its pipeline.
        Answers ``{"spec", "warnings", "kinds"}``: each warning's kind is ``key`` (a key
        column compares differently on the two sides) or ``unique`` (see `_install`)."""
        emap = EntityMap.model_validate(spec)
        urls = self.registry.urls()
        emap.check_apps(urls)
        if emap.conflict.policy == "custom":
            name = emap.conflict.resolver
            assert name is not None
            if name not in self.resolvers:
                try:
                    resolver(name)
                except LookupError as exc:
                    raise MapError(emap.name, "conflict.resolver", str(exc)) from None
        found = self._install(emap, urls)
        warnings = [message for _, message in found]
        answer = {"warnings": warnings, "kinds": [kind for kind, _ in found]}
        spec = emap.model_dump(mode="json")
        with self._lock:
            known = self.registry.maps().get(emap.name)
            if known is not None and known[0] == spec and emap.name in self.pipelines:
                self.pipelines[emap.name].warnings = warnings
                return {"spec": spec, **answer}
            mode = Mode(known[1]) if known else Mode.PAUSE
            self.registry.put_map(emap.name, spec, mode.value)
            if emap.name in self.pipelines:
                self._teardown(self.pipelines.pop(emap.name))
            pipeline = self._build(emap.name, spec, mode)
            pipeline.warnings = warnings
        ray_api.get([ray_api.call(a, "ready") for a in pipeline.actors()], timeout=READY_TIMEOUT_S)
        return {"spec": spec, **answer}

    def _install(self, emap: EntityMap, urls: dict[str, str]) -> list[tuple[str, str]]:
        """Check ``emap`` against both apps' schemas and install its change capture; the
        warnings, as ``(kind, message)``: key columns that compare differently on the two
        sides, then unique indexes besides the key that parallel partitions may write out of
        order."""
        connectors = [open_connector(emap.side(s).app, urls[emap.side(s).app]) for s in Side]
        try:
            schemas = [connectors[s].describe(emap.side(s).entity) for s in Side]
            for side in Side:
                check_schema(emap, side, schemas[side])
            check_types(emap, schemas[0], schemas[1])
            cmap = emap.compile(self.resolvers)
            for side in Side:
                connectors[side].prepare(cmap.capture(side))
            count = emap.partitions or int(self.options.get("partitions", 2))
            return [
                *(("key", m) for m in key_warnings(emap, schemas[0], schemas[1])),
                *(("unique", m) for m in unique_warnings(emap, schemas[0], schemas[1], count)),
            ]
        finally:
            for connector in connectors:
                connector.close()

    def set_mode(self, name: str, mode: str) -> str:
        wanted = Mode(mode)
        with self._lock:
            pipeline = self._pipeline(name)
            pipeline.mode = wanted
            self.registry.set_mode(name, wanted.value)
            readers = list(pipeline.readers)
            effective = pipeline.reader_mode.value
        ray_api.get(
            [ray_api.call(r, "set_mode", effective) for r in readers], timeout=STATUS_TIMEOUT_S
        )
        return wanted.value

    def remove_map(self, name: str) -> None:
        """Stop the map's actors, uninstall its capture on both apps (triggers, change
        tables, gate and receipt rows) and drop its state. Removing a map that is not there
        is refused (`MapError`), so a typo is not mistaken for success.

        If an app cannot be reached the map is left registered, paused, with its state, and
        the error raised: call again once the app is back."""
        with self._lock:
            pipeline = self._pipeline(name)
            self._teardown(self.pipelines.pop(name))
            apps = self.registry.urls()
            emap = pipeline.emap
            cmap = emap.compile(self.resolvers)
            try:
                for side in Side:
                    spec = emap.side(side)
                    connector = open_connector(spec.app, apps[spec.app])
                    try:
                        connector.release(cmap.capture(side))
                    finally:
                        connector.close()
            except Exception:
                self.registry.set_mode(name, Mode.PAUSE.value)
                self._build(name, pipeline.spec, Mode.PAUSE)
                raise
            self.registry.delete_map(name)
            self.registry.delete_events(name)
            shutil.rmtree(self.state_dir / "maps" / name, ignore_errors=True)

    # -- observation ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            pipelines = dict(self.pipelines)
        out: dict[str, Any] = {}
        for name, p in pipelines.items():
            readers = self._gather(p.readers, "status")
            parts = self._gather(p.partitions, "status")
            writers = self._gather(p.writers, "status")
            sides = {}
            for side in Side:
                r = readers[side] or {}
                head, pos = r.get("head"), r.get("read_pos")
                sides[side.label] = {
                    "app": p.emap.side(side).app,
                    "entity": p.emap.side(side).entity,
                    "reader": r or "unavailable",
                    "writer": writers[side] or "unavailable",
                    "lag": head - pos if isinstance(head, int) and isinstance(pos, int) else None,
                    "skew_ms": r.get("skew_ms"),
                    "clock_tolerance_ms": r.get("clock_tolerance_ms"),
                    "changes": sum(s["changes"][side] for s in parts if s),
                    "writes": sum(s["writes"][side] for s in parts if s),
                    # records refused on a duplicate unique value: waiting to be written
                    # again, and the writes made again so far
                    "retrying": sum(s["retrying"][side] for s in parts if s),
                    "retried": sum(s["retried"][side] for s in parts if s),
                }
            out[name] = {
                "mode": p.mode.value,
                "partitions": len(p.partitions),
                "records": sum(s["records"] for s in parts if s),
                "deleted": sum(s["deleted"] for s in parts if s),
                "conflicts": sum(s["conflicts"] for s in parts if s),
                "errors": sum(s["errors"] for s in parts if s),
                "sides": sides,
                "unavailable": sum(1 for s in [*readers, *parts, *writers] if s is None),
                "problems": list(p.problems[-5:]),
                "warnings": list(p.warnings),
                "health": {
                    "state": "drift" if p.drift else "ok",
                    "problems": [
                        {
                            "side": d.side.label if d.side is not None else None,
                            "field": d.field,
                            "message": d.message,
                        }
                        for d in p.drift
                    ],
                    "since_ms": p.drift_since_ms,
                    "last_repair": p.last_repair,
                },
            }
        return out

    def idle(self, names: list[str] | None = None) -> bool:
        """True when every playing map (of ``names``) has nothing left to sync.

        Two looks at the readers: all idle, and all idle again after each has polled once
        more, with unchanged read positions. Nothing was in flight at the first look, so
        anything written since would have been found by the second.
        """
        with self._lock:
            chosen = [
                p
                for n, p in self.pipelines.items()
                if (names is None or n in names) and p.mode is Mode.PLAY
            ]
            missing = [n for n in (names or []) if n not in self.pipelines]
        if missing:
            raise MapError(missing[0], None, "no such map")
        for p in chosen:
            if p.drift:
                raise SchemaError(
                    p.emap.name,
                    p.drift[0].field,
                    "; ".join(d.message for d in p.drift) + " (the map waits for its schema)",
                )
        readers = [r for p in chosen for r in p.readers]
        if not readers:
            return True
        first = self._gather(readers, "status")
        if not all(s and s["idle"] and s["head"] == s["read_pos"] for s in first):
            return False
        for _ in range(100):
            second = self._gather(readers, "status")
            if not all(s and s["idle"] for s in second):
                return False
            if all(b["polls"] > a["polls"] for a, b in zip(first, second, strict=True)):
                return all(
                    a["read_pos"] == b["read_pos"] and b["head"] == b["read_pos"]
                    for a, b in zip(first, second, strict=True)
                )
            time.sleep(0.01)
        return False

    def conflicts(self, name: str, limit: int) -> list[dict[str, Any]]:
        return self._log(name, "conflicts", limit)

    def errors(self, name: str, limit: int) -> list[dict[str, Any]]:
        return self._log(name, "errors", limit)

    def record(self, name: str, key: list[Any]) -> dict[str, Any] | None:
        """The merged values of a record; one that moved to another key is followed."""
        with self._lock:
            p = self._pipeline(name)
        for _ in range(16):
            owner = p.partitions[partition_of(key, len(p.partitions))]
            found = ray_api.get(ray_api.call(owner, "record", key), timeout=STATUS_TIMEOUT_S)
            if isinstance(found, list):  # ["moved", key]
                key = found[1]
                continue
            return found  # type: ignore[no-any-return]
        raise EngineError(f"map {name!r}: record {key!r} moved more than 16 times")

    def verify(self, name: str, limit: int) -> list[Any]:
        """Start `engine.verify.verify_map` of a map in a Ray task of its own (so that this
        actor keeps answering) and return ``[ref]`` to its report. The apps' URLs, secrets
        included, go from here to the task only."""
        with self._lock:
            p = self._pipeline(name)
            apps = self.registry.urls()
        urls = [apps[p.emap.side(s).app] for s in Side]
        return [ray_api.task("engine.verify:verify_map", p.spec, urls, limit)]

    def partitions(self, name: str) -> list[Any]:
        with self._lock:
            return list(self._pipeline(name).partitions)

    def actors(self, name: str) -> dict[str, list[Any]]:
        """The handles of a map's actors (for operations and failure tests)."""
        with self._lock:
            p = self._pipeline(name)
            return {
                "reader": list(p.readers),
                "writer": list(p.writers),
                "partition": list(p.partitions),
            }

    # -- lifecycle -----------------------------------------------------------------------

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            for pipeline in self.pipelines.values():
                self._teardown(pipeline)
            self.pipelines.clear()
        self._thread.join(timeout=5)
        self.registry.close()

    # -- internals -----------------------------------------------------------------------

    def _pipeline(self, name: str) -> Pipeline:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            known = ", ".join(sorted(self.pipelines)) or "none submitted"
            raise MapError(name, None, f"no such map (known: {known})")
        return pipeline

    def _build(self, name: str, spec: dict[str, Any], mode: Mode) -> Pipeline:
        emap = EntityMap.model_validate(spec)
        apps = self.registry.urls()
        urls = [apps[emap.left.app], apps[emap.right.app]]
        count = emap.partitions or int(self.options.get("partitions", 2))
        folder = self.state_dir / "maps" / name
        folder.mkdir(parents=True, exist_ok=True)
        writers = [ray_api.create("writer", spec, int(side), urls[side]) for side in Side]
        partitions = [
            ray_api.create(
                "partition",
                spec,
                i,
                count,
                str(folder / f"partition-{i}.sqlite"),
                writers,
                self.resolvers,
                self.options,
            )
            for i in range(count)
        ]
        readers = [
            ray_api.create("reader", spec, int(side), urls[side], partitions, self.options)
            for side in Side
        ]
        pipeline = Pipeline(spec, emap, mode, writers, partitions, readers)
        self.pipelines[name] = pipeline
        if mode is Mode.PLAY:
            for reader in readers:
                ray_api.call(reader, "set_mode", mode.value)
        return pipeline

    def _teardown(self, pipeline: Pipeline) -> None:
        try:
            ray_api.get([ray_api.call(r, "stop") for r in pipeline.readers], timeout=15)
        except EngineError:
            pass  # NOTE: a reader that cannot stop cleanly is killed below all the same.
        for actor in pipeline.actors():
            ray_api.kill(actor)

    def _gather(
        self, actors: list[Any], method: str, *args: Any, tolerant: bool = True
    ) -> list[Any]:
        """Call ``method`` on every actor at once; None for those that do not answer, or
        (not ``tolerant``) the first failure raised."""
        refs = [ray_api.call(a, method, *args) for a in actors]
        out = []
        for ref in refs:
            try:
                out.append(ray_api.get(ref, timeout=STATUS_TIMEOUT_S))
            except (WorkerLost, EngineError):
                if not tolerant:
                    raise
                out.append(None)
        return out

    def _log(self, name: str, method: str, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            p = self._pipeline(name)
        parts = self._gather(p.partitions, method, limit, tolerant=False)
        entries = [e for part in parts for e in part]
        if method == "errors":
            entries += self.registry.events(name, limit)
        entries.sort(key=lambda e: (e["at_ms"], e["id"]), reverse=True)
        return [{"map": name, **e} for e in entries[:limit]]

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(RECONCILE_EVERY_S):
            with self._lock:
                pipelines = list(self.pipelines.values())
            for pipeline in pipelines:
                try:
                    self._reconcile(pipeline)
                except Exception as exc:  # NOTE: one failing step never stops the loop.
                    pipeline.problems.append(f"{type(exc).__name__}: {exc}")
                    del pipeline.problems[:-20]

    def _reconcile(self, pipeline: Pipeline) -> None:
        """Check the map's schemas now and then, then bring each reader to the mode it
        should have (a restarted reader comes back paused)."""
        if pipeline.mode is Mode.PLAY and time.monotonic() - pipeline.checked >= HEALTH_EVERY_S:
            pipeline.checked = time.monotonic()
            self._check_health(pipeline)
        wanted = pipeline.reader_mode.value
        for reader, status in zip(
            pipeline.readers, self._gather(pipeline.readers, "status"), strict=True
        ):
            if status is not None and status["mode"] != wanted:
                ray_api.get(ray_api.call(reader, "set_mode", wanted), timeout=10)

    def _check_health(self, pipeline: Pipeline) -> None:
        """Look for schema drift (`engine.drift`); on drift pause the readers, suspend the
        triggers of an entity that no longer fits and log each problem; once the entities
        fit again, reinstall the capture, repair, log it and resume."""
        emap = pipeline.emap
        cmap = emap.compile(self.resolvers)
        urls = self.registry.urls()
        connectors = [open_connector(emap.side(s).app, urls[emap.side(s).app]) for s in Side]
        try:
            found = problems(emap, cmap, connectors)
            misfits = [d for d in found if not d.fits]
            if misfits or (found and not pipeline.drift):
                if found != pipeline.drift:
                    self._drifting(pipeline, found)
                for d in misfits:
                    for side in [d.side] if d.side is not None else []:
                        connectors[side].suspend(cmap.capture(side))
                return
            if not pipeline.drift:
                return
            drifted = pipeline.drifted | {d.side for d in found if d.side is not None}
            done = repair(cmap, connectors, drifted)
        finally:
            for connector in connectors:
                connector.close()
        summary = done.as_dict()
        sides = ", ".join(sorted(s.label for s in drifted))
        self.registry.add_event(
            emap.name,
            now_ms(),
            None,
            "repair",
            None,
            f"schema fits again; capture reinstalled on {sides or 'no side'};"
            f" records written: {summary['written']}, recaptured: {summary['recaptured']},"
            f" left differing: {len(done.unresolved)}, refused: {len(done.failures)}",
            summary,
        )
        with self._lock:
            pipeline.last_repair = {"at_ms": now_ms(), **summary}
            pipeline.drift = []
            pipeline.drift_since_ms = None
            pipeline.drifted = set()

    def _drifting(self, pipeline: Pipeline, found: list[Drift]) -> None:
        at = now_ms()
        emap = pipeline.emap
        for d in found:
            if d in pipeline.drift:
                continue
            app = emap.side(d.side).app if d.side is not None else None
            self.registry.add_event(
                emap.name,
                at,
                app,
                "schema",
                d.field,
                f"{d.message}; the map waits until the schema fits again",
                {"side": d.side.label if d.side is not None else None, "fits": d.fits},
            )
        with self._lock:
            pipeline.drift = list(found)
            pipeline.drift_since_ms = pipeline.drift_since_ms or at
            pipeline.drifted |= {d.side for d in found if d.side is not None}
