"""Every Ray API call dualsync makes is made here.

The actor classes in this package are plain classes; `create` applies ``ray.remote`` with
the restart options, once per class. Ray's exceptions are translated here into the engine's
error tree: an application error raised inside an actor comes back as itself, a dead or
restarting actor as `WorkerLost`, a timeout as `SyncTimeout`.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import ray
from ray import exceptions as rex

from engine.errors import DualsyncError, EngineError, SyncTimeout, WorkerLost

__all__ = [
    "Handle",
    "Ref",
    "call",
    "create",
    "get",
    "get_actor",
    "init",
    "is_initialized",
    "kill",
    "release_name",
    "shutdown",
    "task",
]

Handle = Any  # a Ray actor handle
Ref = Any  # a Ray object ref

# Actors restart forever and rebuild themselves from the state store; a call in flight when
# an actor dies fails (at-most-once), and callers retry from durable cursors instead.
RESTART = {"max_restarts": -1, "max_task_retries": 0}

KINDS = {
    "coordinator": ("actors.coordinator", "Coordinator", {"max_concurrency": 1}),
    "partition": ("actors.partition", "Partition", {"max_concurrency": 1}),
    "reader": ("actors.reader", "Reader", {"max_concurrency": 1}),
    "writer": ("actors.writer", "Writer", {"max_concurrency": 1}),
}
_REMOTE: dict[str, Any] = {}


def init(address: str | None, namespace: str) -> bool:
    """Join ``address`` (``auto``, ``ray://host:port``) or start an embedded Ray.

    Returns True if this call started (and so owns) the Ray runtime.
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "namespace": namespace,
        "include_dashboard": False,
        "log_to_driver": os.environ.get("DUALSYNC_RAY_LOGS") == "1",
        "configure_logging": False,
    }
    if address:
        kwargs["address"] = address
    ray.init(**kwargs)
    return True


def is_initialized() -> bool:
    return ray.is_initialized()


def shutdown() -> None:
    ray.shutdown()


def create(kind: str, *args: Any, name: str | None = None, namespace: str | None = None) -> Handle:
    """Create an actor of ``kind`` (see `KINDS`) with the restart options."""
    remote = _REMOTE.get(kind)
    if remote is None:
        module, cls_name, extra = KINDS[kind]
        cls = getattr(importlib.import_module(module), cls_name)
        options: dict[str, Any] = {"num_cpus": 0, **RESTART, **extra}
        remote = _REMOTE[kind] = ray.remote(**options)(cls)
    options = {}
    if name:
        options["name"] = name
    if namespace:
        options["namespace"] = namespace
    return remote.options(**options).remote(*args) if options else remote.remote(*args)


def _run(target: str, *args: Any) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(*args)


def task(target: str, *args: Any) -> Ref:
    """Run the function ``"module:name"`` with ``args`` as a Ray task (one worker process,
    no CPU reserved), for work too long for an actor's call such as `engine.verify`."""
    remote = _REMOTE.get("task")
    if remote is None:
        remote = _REMOTE["task"] = ray.remote(num_cpus=0, max_retries=0)(_run)
    return remote.remote(target, *args)


def get_actor(name: str, namespace: str | None = None) -> Handle | None:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def call(handle: Handle, method: str, *args: Any) -> Ref:
    return getattr(handle, method).remote(*args)


def get(refs: Any, timeout: float | None = None) -> Any:
    """``ray.get`` with errors translated into the engine's tree."""
    try:
        return ray.get(refs, timeout=timeout)
    except rex.GetTimeoutError as exc:
        raise SyncTimeout(f"no answer within {timeout} s") from exc
    except rex.RayActorError as exc:
        raise WorkerLost(f"an actor died or is restarting: {_first_line(exc)}") from exc
    except rex.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, DualsyncError):
            raise cause from None
        if isinstance(cause, rex.RayActorError):
            raise WorkerLost(f"an actor died or is restarting: {_first_line(cause)}") from exc
        raise EngineError(f"{type(cause).__name__}: {cause}") from exc
    except rex.RayError as exc:
        raise EngineError(_first_line(exc)) from exc


def kill(handle: Handle, *, restart: bool = False) -> None:
    try:
        ray.kill(handle, no_restart=not restart)
    except (ValueError, rex.RayError):
        pass  # NOTE: already gone; killing is idempotent.


def release_name(name: str, namespace: str | None, timeout: float = 30.0) -> None:
    """Wait until no live actor holds ``name`` (a killed actor frees it shortly after)."""
    import time

    deadline = time.monotonic() + timeout
    while get_actor(name, namespace) is not None:
        if time.monotonic() > deadline:
            raise EngineError(f"actor name {name!r} still taken after {timeout} s")
        time.sleep(0.05)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
