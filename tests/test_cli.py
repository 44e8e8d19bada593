"""``dualsync validate``: map files are checked and summarised, or refused naming the problem.

(``dualsync demo`` starts Ray and is covered elsewhere.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.demo import MAP_YAML

ROOT = Path(__file__).resolve().parent.parent

GOOD = MAP_YAML.replace("{policy: lww}", "{policy: prefer, app: crm}")
SUMMARY = "map 'customers' finance.customers <-> crm.accounts, 4 fields, policy prefer:crm"

ONE_WAY_KEY = GOOD.replace(
    "{left: account, right: account_number}",
    "{left: account, right: account_number, direction: left_to_right}",
)
BAD_DIRECTION = GOOD.replace("direction: left_to_right", "direction: sideways")
UNKNOWN_PREFERRED_APP = GOOD.replace("app: crm}", "app: hr}")
NOT_YAML = "name: customers\nleft: {app: finance\n  - ]\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_prints_what_a_good_map_maps_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "customers.yaml", GOOD)
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{path}: {SUMMARY}\n"
    assert err == ""


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (ONE_WAY_KEY, "account", "key column 'account' must sync both ways, not left_to_right"),
        (BAD_DIRECTION, "fields[credit_limit].direction", "Input should be 'both'"),
        (UNKNOWN_PREFERRED_APP, "conflict.app", "prefer names app 'hr'"),
    ],
    ids=["one-way-key", "bad-direction", "unknown-preferred-app"],
)
def test_validate_names_the_map_field_and_problem_of_a_bad_map_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str, problem: str
) -> None:
    path = write(tmp_path, "customers.yaml", text)
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: map 'customers', field '{field}': ")
    assert problem in err


def test_validate_reports_a_yaml_syntax_error_with_its_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "broken.yaml", NOT_YAML)
    assert main(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}: map: {path} is not valid yaml: ")
    assert "line 2" in err


def test_validate_checks_every_file_and_fails_if_any_is_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, "good.yaml", GOOD)
    bad = write(tmp_path, "bad.yaml", ONE_WAY_KEY)
    missing = tmp_path / "missing.yaml"
    assert main(["validate", str(bad), str(good), str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{good}: {SUMMARY}\n"
    lines = err.splitlines()
    assert lines[0].startswith(f"{bad}: map 'customers', field 'account'")
    assert lines[1].startswith(f"{missing}: map: cannot read map file {missing}")


def test_python_dash_m_engine_cli_validate_runs_the_command(tmp_path: Path) -> None:
    good = write(tmp_path, "customers.yaml", GOOD)
    bad = write(tmp_path, "broken.yaml", NOT_YAML)
    ok = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", str(good)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{good}: {SUMMARY}\n", "")
    refused = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert f"{bad} is not valid yaml" in refused.stderr
