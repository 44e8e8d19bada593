"""App URLs: environment references, redaction, and secrets kept out of plain text.

- ``${NAME}`` anywhere in a URL is replaced by the environment variable ``NAME`` where the
  connection is made (`resolve`, called by `engine.connectors.open_connector`, so in the
  engine's own processes): ``postgresql://app:${PGPASSWORD}@db/erp``. The registry and every
  output keep the reference, never the value.
- A password given inline (``user:password@`` or a ``password=`` query parameter) is shown
  as ``***`` by everything the engine prints or returns (`redact`), and stored only
  encrypted (`SecretBox`): the registry keeps the redacted URL next to a Fernet token of
  the whole URL.

The key of the `SecretBox` comes from ``DUALSYNC_SECRET_KEY`` (a Fernet key, see
`SecretBox.new_key`), else from ``secret.key`` in the state directory, created on first
use, readable by its owner only. That file protects a copy of ``engine.sqlite`` alone (a
backup, a bug report), not a copy of the whole state directory: for that, keep the key in
the environment or reference the password with ``${NAME}``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from engine.errors import AppError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = ["SecretBox", "has_secret", "redact", "resolve", "scrub"]

KEY_ENV = "DUALSYNC_SECRET_KEY"
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?#]*):([^@/?#]*)@")
_SECRET_PARAMS = ("password", "passwd", "pwd", "secret", "sslpassword")
_PARAM = re.compile(r"([?&](?:" + "|".join(_SECRET_PARAMS) + r")=)([^&#]*)", re.IGNORECASE)


def resolve(app: str | None, url: str) -> str:
    """``url`` with every ``${NAME}`` replaced by the environment variable's value."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        found = os.environ.get(name)
        if found is None:
            raise AppError(
                app, f"the URL references ${{{name}}}, which is not set in the engine's environment"
            )
        return found

    return _REF.sub(value, url)


def _inline(url: str) -> list[str]:
    """The inline secrets of ``url`` (not ``${NAME}`` references)."""
    found = []
    m = _USERINFO.match(url)
    if m and m.group(2) and not _REF.fullmatch(m.group(2)):
        found.append(m.group(2))
    query = urlsplit(url).query
    for key, val in parse_qsl(query, keep_blank_values=True):
        if key.lower() in _SECRET_PARAMS and val and not _REF.fullmatch(val):
            found.append(val)
    return found


def has_secret(url: str) -> bool:
    """Whether ``url`` holds a password inline (one that must not be stored as is)."""
    return bool(_inline(url))


def redact(url: str) -> str:
    """``url`` with inline passwords shown as ``***`` (``${NAME}`` references kept)."""

    def userinfo(m: re.Match[str]) -> str:
        return m.group(0) if _REF.fullmatch(m.group(2)) else f"{m.group(1)}:***@"

    def param(m: re.Match[str]) -> str:
        return m.group(0) if _REF.fullmatch(m.group(2)) or not m.group(2) else m.group(1) + "***"

    return _PARAM.sub(param, _USERINFO.sub(userinfo, url))


def scrub(text: str, url: str) -> str:
    """``text`` (a message) with every inline secret of ``url`` replaced by ``***``."""
    for secret in _inline(url):
        for form in {secret, unquote(secret)}:
            text = text.replace(form, "***")
    return text


class SecretBox:
    """Encrypts and decrypts stored URLs with a Fernet key (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "secret.key"
        self._fernet: Fernet | None = None

    @staticmethod
    def new_key() -> str:
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()

    def _box(self) -> Fernet:
        if self._fernet is None:
            from cryptography.fernet import Fernet

            key = os.environ.get(KEY_ENV)
            if not key:
                try:
                    fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    pass
                else:
                    with os.fdopen(fd, "w") as f:
                        f.write(self.new_key())
                key = self._path.read_text().strip()
            self._fernet = Fernet(key.encode())
        return self._fernet

    def seal(self, text: str) -> str:
        return self._box().encrypt(text.encode()).decode()

    def open(self, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._box().decrypt(token.encode()).decode()
        except InvalidToken:
            raise AppError(
                None,
                f"a stored app URL cannot be decrypted with the key in {KEY_ENV} or"
                f" {self._path}: was the key changed?",
            ) from None
