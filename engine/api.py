"""The Python API: `SyncEngine`.

    from engine import SyncEngine
    eng = SyncEngine.start(state_dir="state")   # embedded Ray; address="auto" joins a cluster
    eng.add_app("finance", "sqlite:///finance.db")
    eng.add_app("crm", "sqlite:///crm.db")
    eng.submit_map("maps/customers.yaml")
    eng.play("customers")
    eng.wait_idle(timeout=30)
    print(eng.status())
    eng.pause("customers"); eng.stop()

The engine runs in Ray actors; this object is a thin client of the coordinator actor. Ray is
imported only when an engine starts (``import engine`` alone never loads it).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from conflict import DEFAULT_TOLERANCE_MS, Resolver, UnknownPolicy, resolver
from engine.errors import EngineError, SyncTimeout
from engine.ids import Mode
from engine.maps import EntityMap, KeyComparisonWarning, UniqueOrderWarning, load_map
from engine.pipeline import DEFAULT_CACHE_RECORDS
from engine.verify import VerifyReport

__all__ = ["SyncEngine"]

NAMESPACE = "dualsync"


def normalise_url(url: str) -> str:
    """Make a relative ``sqlite:///`` path absolute: actors do not share our working dir."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        path = url[len(prefix) :]
        if path and path != ":memory:":
            return prefix + str(Path(path).resolve())
    return url


class SyncEngine:
    """A running dualsync engine. Create one with `SyncEngine.start`."""

    def __init__(self, coordinator: Any, name: str, state_dir: Path, owns_ray: bool) -> None:
        self._coordinator = coordinator
        self._name = name
        self.state_dir = state_dir
        self._owns_ray = owns_ray
        self._stopped = False

    @classmethod
    def start(
        cls,
        state_dir: str | Path = "state",
        *,
        address: str | None = None,
        partitions: int = 2,
        batch_size: int = 5000,
        resolvers: Mapping[str, Resolver] | None = None,
        clock_tolerance_ms: int = DEFAULT_TOLERANCE_MS,
        cache_records: int = DEFAULT_CACHE_RECORDS,
    ) -> SyncEngine:
        """Start (or attach to) the engine whose durable state lives in ``state_dir``.

        ``address``: None starts an embedded local Ray (unless one is already initialised in
        this process); ``"auto"`` or ``"ray://host:10001"`` joins an existing cluster.
        ``partitions`` is the default number of partition actors per map; ``batch_size``
        the most changes a reader moves per batch. ``resolvers`` are custom conflict
        policies by name (see `conflict.register_resolver`). ``clock_tolerance_ms``: how far
        an application's commit times may run ahead of (or behind) the engine's clock before
        they are clipped and the skew is logged (docs/architecture.md). ``cache_records``:
        the records each partition keeps in memory beyond those changed since its last
        checkpoint (the rest stay in its store on disk).
        """
        from actors import ray_api  # NOTE: lazily, so that `import engine` never loads Ray.

        path = Path(state_dir).resolve()
        path.mkdir(parents=True, exist_ok=True)
        owns = ray_api.init(address, NAMESPACE)
        name = "coordinator-" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        handle = ray_api.get_actor(name, NAMESPACE)
        if handle is None:
            options = {
                "partitions": partitions,
                "batch_size": batch_size,
                "clock_tolerance_ms": clock_tolerance_ms,
                "cache_records": cache_records,
            }
            handle = ray_api.create(
                "coordinator",
                str(path),
                options,
                dict(resolvers or {}),
                name=name,
                namespace=NAMESPACE,
            )
        ray_api.get(ray_api.call(handle, "ready"), timeout=120)
        return cls(handle, name, path, owns)

    # -- calls ---------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, timeout: float | None = 120) -> Any:
        if self._stopped:
            raise EngineError("the engine is stopped")
        from actors import ray_api

        return ray_api.get(ray_api.call(self._coordinator, method, *args), timeout=timeout)

    def add_app(self, name: str, url: str) -> None:
        """Register an application, or change its URL; relative SQLite paths are made
        absolute. The URL is checked now: `AppError` for an unknown scheme, a SQLite file or
        directory that does not exist, a server that does not answer, refused credentials.

        ``${NAME}`` in the URL is replaced by the environment variable where connections
        are made (the engine's processes); a password given inline is stored encrypted and
        shown as ``***``. Changing the URL of an app a playing map uses is refused: pause
        the map, change the URL (the map is checked against it and re-targeted), play. The
        new URL must reach the same database: the map keeps its positions in its change log.
        """
        self._call("add_app", name, normalise_url(url))

    def apps(self) -> dict[str, str]:
        """The registered apps and their URLs, inline passwords shown as ``***``."""
        return self._call("apps")  # type: ignore[no-any-return]

    def register_resolver(self, name: str, fn: Resolver) -> None:
        """Make ``fn(field, candidates) -> winner`` available as ``conflict: {custom: name}``."""
        self._call("add_resolver", name, fn)

    def submit_map(self, source: str | Path | Mapping[str, Any] | EntityMap) -> EntityMap:
        """Validate and install a map (a file path, a dict or an `EntityMap`).

        A new map starts paused; resubmitting a changed map keeps its mode and state. A key
        column that compares differently on the two sides (case, trailing spaces) is a
        `KeyComparisonWarning`; a unique index besides the key, on a map running on several
        partitions, a `UniqueOrderWarning` (see the README, "Upserts"); both are also listed
        in `status()` (``warnings``). A
        custom resolver the map names is taken from `register_resolver` (this process) or
        `SyncEngine.register_resolver`.
        """
        emap = load_map(source)
        name = emap.conflict.resolver
        if emap.conflict.policy == "custom" and name:
            try:
                fn = resolver(name)  # registered in this process (or "module:function")
            except UnknownPolicy:
                pass  # registered with the engine, or refused by it with a clear error
            else:
                self._call("add_resolver", name, fn)
        answer = self._call("submit_map", emap.model_dump(mode="json"))
        for kind, message in zip(answer["kinds"], answer["warnings"], strict=True):
            category = UniqueOrderWarning if kind == "unique" else KeyComparisonWarning
            warnings.warn(message, category, stacklevel=2)
        return emap

    def play(self, name: str) -> None:
        self._call("set_mode", name, Mode.PLAY.value)

    def pause(self, name: str) -> None:
        """Stop syncing ``name``; changes keep queueing in the applications' change tables."""
        self._call("set_mode", name, Mode.PAUSE.value)

    def remove_map(self, name: str) -> None:
        """Delete a map: stop its actors, uninstall its change capture from both apps
        (triggers, change tables and gate rows) and drop its state. `stop` keeps all of
        that, so that a restarted engine resumes; this is how to remove it. Raises
        `MapError` for an unknown map; if an app cannot be reached, the map stays (paused)
        and the error is raised."""
        self._call("remove_map", name)

    def wait_idle(self, timeout: float = 30, maps: list[str] | None = None) -> None:
        """Return once every playing map (or those of ``maps``) has nothing left to sync.

        Raises `SyncTimeout` (with the status) when that takes longer than ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._call("idle", maps, timeout=max(1.0, deadline - time.monotonic() + 5)):
                return
            if time.monotonic() >= deadline:
                raise SyncTimeout(f"still syncing after {timeout} s; status: {self.status()}")
            time.sleep(0.02)

    def status(self) -> dict[str, Any]:
        """Per map: mode, record/conflict/error counts, and per side the reader position,
        lag (changes not yet read), changes merged and writes made."""
        return self._call("status")  # type: ignore[no-any-return]

    def conflicts(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The map's latest same-field conflicts: both values with origin and timestamp, the
        winner and the rule that chose it."""
        return self._call("conflicts", name, limit)  # type: ignore[no-any-return]

    def errors(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        """The map's latest row-level errors, each with the record's payload."""
        return self._call("errors", name, limit)  # type: ignore[no-any-return]

    def record(self, name: str, key: Any) -> dict[str, Any] | None:
        """The merged values of one record (a key value or a tuple of them)."""
        key_list = list(key) if isinstance(key, (tuple, list)) else [key]
        return self._call("record", name, key_list)  # type: ignore[no-any-return]

    def verify(self, name: str, limit: int = 100) -> VerifyReport:
        """Compare the map's two applications record by record (see `engine.verify`).

        Returns a `VerifyReport`: records only on the left, only on the right, and records
        whose fields differ (at most ``limit`` of each listed, all counted); ``ok`` when the
        sides agree. Run it on a paused or idle map: a playing map keeps changing both sides.
        """
        from actors import ray_api

        [ref] = self._call("verify", name, limit)
        return ray_api.get(ref, timeout=None)  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Stop every map's actors and the coordinator (and Ray, if this engine started it).

        The state directory keeps everything needed to start again where this left off.
        """
        if self._stopped:
            return
        from actors import ray_api

        try:
            self._call("shutdown", timeout=60)
        finally:
            self._stopped = True
            ray_api.kill(self._coordinator)
            if self._owns_ray:
                ray_api.shutdown()
            else:
                ray_api.release_name(self._name, NAMESPACE)

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
