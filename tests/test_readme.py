"""The README's promises: its API example runs, and `dualsync demo` converges."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.demo import FINANCE_ROWS, create_apps

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray


def test_the_readme_api_example_runs_on_the_demo_files(
    ray_runtime: None, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README shows a Python example"
    create_apps(tmp_path / "dualsync-demo")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "'customers'" in printed and "'mode': 'pause'" not in printed.split("\n")[0]
    crm = sqlite3.connect(tmp_path / "dualsync-demo" / "crm.db")
    accounts = {r[0] for r in crm.execute("SELECT account_number FROM accounts")}
    assert {row[0] for row in FINANCE_ROWS} <= accounts


def test_dualsync_demo_converges_and_shows_each_conflict(tmp_path: Path) -> None:
    # Its own process and its own embedded Ray, as a user would run it.
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "CONVERGED: finance and crm hold the same 6 records" in out
    assert "conflict on ('C004',) name" in out and "wins (lww)" in out
    assert "both survive" in out
    assert "C005 in finance: False, in crm: False" in out
