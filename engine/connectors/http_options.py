"""The URL of an HTTP application and its options (documented in `engine.connectors.http`)."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import AppError

__all__ = ["OPTIONS", "Options", "parse_url"]

OPTIONS = (
    "mode", "poll", "since", "modified", "full", "webhook", "secret", "token", "inbox", "id",
    "ids", "pagesize", "page", "per_page", "concurrency", "timeout", "retries", "backoff",
)  # fmt: skip


@dataclass(frozen=True)
class Options:
    base: str  # scheme://host:port/base-path, no trailing slash
    mode: str = "poll"
    poll: float = 5.0
    since: str | None = None
    modified: str = "updatedAt"
    full: int = 10
    webhook: tuple[str, int] | None = None
    secret: bytes | None = None
    token: str | None = None
    inbox: Path = Path()
    id_field: str = "id"
    text_ids: bool = False
    pagesize: int | None = None
    page: str = "_page"
    per_page: str = "_per_page"
    concurrency: int = 16
    timeout: float = 30.0
    retries: int = 6
    backoff: float = 0.5


def parse_url(app: str, url: str) -> Options:
    """The options of an ``http(s)://`` URL; `AppError` naming what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AppError(app, f"expected a URL like http://host:port/base-path, found {url!r}")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown:
        raise AppError(app, f"unknown URL option {unknown[0]!r} (known: {', '.join(OPTIONS)})")
    opt = {k: v[-1] for k, v in query.items()}
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise AppError(app, f"bad port in {url!r}: {exc}") from None
    path = parts.path.rstrip("/")
    base = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{path}"

    def number(name: str, default: float, kind: type = float, low: float = 0) -> Any:
        if name not in opt:
            return default
        try:
            value = kind(opt[name])
        except ValueError:
            raise AppError(app, f"URL option {name}={opt[name]!r} is not a number") from None
        if value < low:
            raise AppError(app, f"URL option {name}={opt[name]!r} must be at least {low}")
        return value

    mode = opt.get("mode", "poll")
    if mode not in ("poll", "webhook"):
        raise AppError(app, f"URL option mode={mode!r}: expected poll or webhook")
    ids = opt.get("ids", "native")
    if ids not in ("text", "native"):
        raise AppError(app, f"URL option ids={ids!r}: expected text or native")
    webhook = None
    secret = None
    if mode == "webhook":
        host, _, wport = opt.get("webhook", "").rpartition(":")
        if not host or not wport.isdigit():
            raise AppError(app, "webhook mode needs webhook=<host:port> for its endpoint")
        webhook = (host.strip("[]"), int(wport))
        var = opt.get("secret", "")
        if not var:
            raise AppError(app, "webhook mode needs secret=<name of the env var of the secret>")
        value = os.environ.get(var)
        if not value:
            raise AppError(app, f"the webhook secret's environment variable {var!r} is not set")
        secret = value.encode()
    token = None
    if opt.get("token"):
        token = os.environ.get(opt["token"])
        if not token:
            raise AppError(app, f"the token's environment variable {opt['token']!r} is not set")
    if opt.get("inbox"):
        inbox = Path(opt["inbox"]).expanduser()
    else:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
        name = "_".join(p for p in (parts.hostname, str(port), slug) if p)
        inbox = Path.home() / ".dualsync" / "http" / f"{name}.sqlite"
    pagesize = number("pagesize", 0, int, 1) or None
    return Options(
        base=base,
        mode=mode,
        poll=number("poll", 5.0, float, 0.001),
        since=opt.get("since") or None,
        modified=opt.get("modified") or "updatedAt",
        full=number("full", 10, int, 1),
        webhook=webhook,
        secret=secret,
        token=token,
        inbox=inbox,
        id_field=opt.get("id") or "id",
        text_ids=ids == "text",
        pagesize=pagesize,
        page=opt.get("page") or "_page",
        per_page=opt.get("per_page") or "_per_page",
        concurrency=number("concurrency", 16, int, 1),
        timeout=number("timeout", 30.0, float, 0.001),
        retries=number("retries", 6, int, 1),
        backoff=number("backoff", 0.5, float, 0),
    )
