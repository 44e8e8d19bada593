"""json-server for the tests: a real third-party REST server, run as its own process on loopback.

json-server is installed once into ``tests/.node/node_modules`` (git ignores ``node_modules/``)
with ``npm install --prefix tests/.node --no-save --no-package-lock --ignore-scripts
json-server@1.0.0-beta.3`` when it is missing: nothing else is downloaded. Each server gets a
free port and a fresh ``db.json`` in its own folder, and runs with ``NODE_ENV=production``:
json-server then does not watch its file (its watcher can reload the file under its own
writes) and serves static files from ``./public``, which must exist. If node or npm is
missing this raises: the tests fail, nothing is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import wait_until

VERSION = "1.0.0-beta.3"
NODE_DIR = Path(__file__).parent / ".node"
PACKAGE = NODE_DIR / "node_modules" / "json-server"
_install = threading.Lock()


def json_server_bin() -> Path:
    """json-server's entry point, installed into ``tests/.node`` if it is not there yet."""
    with _install:
        manifest = PACKAGE / "package.json"
        if manifest.exists() and json.loads(manifest.read_text())["version"] == VERSION:
            return PACKAGE / "lib" / "bin.js"
        npm = shutil.which("npm")
        if shutil.which("node") is None or npm is None:
            raise RuntimeError("json-server needs Node.js and npm on PATH (node >= 18.3)")
        NODE_DIR.mkdir(exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-save", "--no-package-lock",
             "--no-audit", "--no-fund", "--ignore-scripts", f"json-server@{VERSION}"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0 or not manifest.exists():
            raise RuntimeError(f"installing json-server failed:\n{done.stdout}\n{done.stderr}")
        return PACKAGE / "lib" / "bin.js"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JsonServer:
    """One json-server process over ``folder/db.json``; started by `start`, or `add`."""

    def __init__(self, folder: Path, collections: dict[str, list[Any]] | None = None) -> None:
        self.folder = folder
        (folder / "public").mkdir(parents=True, exist_ok=True)
        self.db = folder / "db.json"
        self.db.write_text(json.dumps(collections or {}))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("json-server needs Node.js on PATH")
        entry = json_server_bin()
        for attempt in range(3):
            log = (self.folder / "server.log").open("wb")
            self.proc = subprocess.Popen(
                [node, str(entry), "db.json", "--port", str(self.port), "--host", "127.0.0.1"],
                cwd=self.folder,
                env={**os.environ, "NODE_ENV": "production"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            proc = self.proc

            def up(proc: subprocess.Popen[bytes] = proc) -> bool:
                return proc.poll() is not None or self._answers()

            wait_until(up, 30, "json-server to answer")
            if proc.poll() is None:
                return
            output = (self.folder / "server.log").read_text(errors="replace")
            if "EADDRINUSE" in output and attempt < 2:
                self.port = free_port()
                continue
            raise RuntimeError(f"json-server exited with {proc.returncode}:\n{output}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def add(self, collection: str) -> None:
        """Make an (empty) collection exist and (re)start the server: json-server reads its
        file only when it starts."""
        self.stop()  # NOTE: json-server writes the file before it answers: it is current
        data = json.loads(self.db.read_text())
        data.setdefault(collection, [])
        self.db.write_text(json.dumps(data))
        self.start()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A plain HTTP request, as another program would make it."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                text = resp.read()
                return resp.status, json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
