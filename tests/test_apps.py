"""Apps: URLs checked when added, secrets never shown or stored in plain text, and a URL
that changes only while its maps are paused. On a real Ray, SQLite files and the servers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from engine import AppError, SyncEngine
from engine.maps import KeyComparisonWarning
from engine.urls import redact, resolve, scrub

from conftest import CUSTOMERS, SECRET_ENV, Apps, connect, start_sync, wait_until
from harness_mysql import Db, MysqlHarness, url_for

pytestmark = pytest.mark.ray


# -- pure helpers ------------------------------------------------------------------------------


def test_redact_hides_inline_passwords_and_keeps_references() -> None:
    assert redact("postgresql://app:pw@db/erp") == "postgresql://app:***@db/erp"
    assert redact("postgresql://app:${PGPW}@db/erp") == "postgresql://app:${PGPW}@db/erp"
    assert redact("postgresql://u@h/db?password=x&schema=s") == (
        "postgresql://u@h/db?password=***&schema=s"
    )
    assert redact("mysql://root@127.0.0.1/test") == "mysql://root@127.0.0.1/test"
    assert scrub("login p@ss failed", "mysql://u:p%40ss@h/db") == "login *** failed"


def test_a_reference_to_an_unset_variable_is_refused_naming_it() -> None:
    with pytest.raises(AppError, match=r"\$\{DUALSYNC_NOT_SET\}, which is not set"):
        resolve("crm", "mysql://u:${DUALSYNC_NOT_SET}@h/db")


# -- checks when an app is added -----------------------------------------------------------------


def test_add_app_refuses_a_sqlite_path_that_does_not_exist_and_creates_nothing(
    engine: Any, tmp_path: Path
) -> None:
    with pytest.raises(AppError, match="does not exist"):
        engine.add_app("finance", f"sqlite:///{tmp_path}/no-such-dir/finance.db")
    with pytest.raises(AppError, match=r"database file .*typo\.db does not exist"):
        engine.add_app("finance", f"sqlite:///{tmp_path}/typo.db")
    assert not (tmp_path / "typo.db").exists()
    (tmp_path / "notes.txt").write_text("not a database, but long enough to look at" * 50)
    with pytest.raises(AppError, match="cannot be used as a SQLite database"):
        engine.add_app("finance", f"sqlite:///{tmp_path}/notes.txt")
    assert engine.apps() == {}


def test_add_app_refuses_servers_that_do_not_answer_or_refuse_the_login(engine: Any) -> None:
    cases = {
        "postgresql://postgres@127.0.0.1:1/test": "connect",
        "postgresql://postgres@127.0.0.1:5432/ds_no_such_db": "ds_no_such_db",
        "mysql://root:wrong-pw-123@127.0.0.1:3306/test": "Access denied",
        "mysql://root@127.0.0.1:3306/ds_no_such_db": "ds_no_such_db",
        "http://127.0.0.1:1/api": "cannot be reached",
        "ftp://example.com/x": "no connector for URL",
    }
    for url, problem in cases.items():
        with pytest.raises(AppError) as refused:
            engine.add_app("crm", url)
        assert problem in str(refused.value), (url, str(refused.value))
        assert "wrong-pw-123" not in str(refused.value)
    assert engine.apps() == {}


# -- secrets -------------------------------------------------------------------------------------


@pytest.fixture
def maria_user(tmp_path: Path) -> Iterator[tuple[MysqlHarness, str]]:
    """A MariaDB database and a user of its own whose password is $DUALSYNC_TEST_SECRET."""
    maria = MysqlHarness(tmp_path)
    user = "ds_u_" + os.urandom(4).hex()
    admin = Db()
    try:
        admin.execute(
            f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY %s", (os.environ[SECRET_ENV],)
        )
        admin.execute(f"GRANT ALL ON `{maria.database}`.* TO '{user}'@'127.0.0.1'")
        maria.db.execute(
            "CREATE TABLE accounts (account_number VARCHAR(20) PRIMARY KEY,"
            " name VARCHAR(100), credit_limit DOUBLE, telephone VARCHAR(40))"
        )
        yield maria, user
    finally:
        admin.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        admin.close()
        maria.close()


def user_url(maria: MysqlHarness, user: str, password: str) -> str:
    base = urlsplit(url_for(maria.database))
    return f"mysql://{user}:{password}@{base.hostname}:{base.port or 3306}{base.path}"


def state_bytes(state: Path) -> bytes:
    """Every file of the engine's state directory except the key file, concatenated."""
    return b"".join(
        p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file() and p.name != "secret.key"
    )


def test_a_password_referenced_from_the_environment_is_never_shown_or_stored(
    engine: Any, apps: Apps, maria_user: tuple[MysqlHarness, str]
) -> None:
    maria, user = maria_user
    secret = os.environ[SECRET_ENV].encode()
    url = user_url(maria, user, "${" + SECRET_ENV + "}")
    engine.add_app("finance", apps.urls["finance"])
    engine.add_app("crm", url)
    assert engine.apps()["crm"] == url  # the reference, as given
    with pytest.warns(KeyComparisonWarning, match="utf8mb4_general_ci"):
        engine.submit_map(CUSTOMERS)
    engine.play("customers")
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 1.5, NULL)")
    wait_until(lambda: maria.db.execute("SELECT name FROM accounts") == [("Contoso",)], 60, "C1")
    assert secret not in repr(engine.status()).encode()
    assert secret not in state_bytes(engine.state_dir)


def test_an_inline_password_is_redacted_and_stored_encrypted(
    ray_runtime: None, apps: Apps, maria_user: tuple[MysqlHarness, str], tmp_path: Path
) -> None:
    maria, user = maria_user
    password = os.environ[SECRET_ENV]
    state = tmp_path / "state"
    eng = SyncEngine.start(state_dir=state)
    try:
        eng.add_app("finance", apps.urls["finance"])
        eng.add_app("crm", user_url(maria, user, password))
        assert eng.apps()["crm"] == user_url(maria, user, "***")
        with pytest.warns(KeyComparisonWarning, match="utf8mb4_general_ci"):
            eng.submit_map(CUSTOMERS)
        eng.play("customers")
        apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Before', NULL, NULL)")
        wait_until(lambda: maria.db.execute("SELECT name FROM accounts") == [("Before",)], 60)
        assert password.encode() not in state_bytes(state)
        assert password not in repr(eng.status())
    finally:
        eng.stop()
    # A restarted engine decrypts it and carries on.
    eng = SyncEngine.start(state_dir=state)
    try:
        eng.play("customers")
        apps.finance.execute("INSERT INTO customers VALUES ('C2', 'After restart', NULL, NULL)")
        wait_until(
            lambda: (
                maria.db.execute("SELECT name FROM accounts WHERE account_number = 'C2'")
                == [("After restart",)]
            ),
            60,
            "C2 in MariaDB",
        )
        with pytest.raises(AppError) as refused:
            eng.add_app("other", user_url(maria, user, "not-" + password))
        assert "Access denied" in str(refused.value)
        assert password not in str(refused.value)
    finally:
        eng.stop()


# -- changing a URL --------------------------------------------------------------------------------


def test_an_app_url_cannot_change_while_its_map_plays_and_retargets_it_when_paused(
    engine: Any, apps: Apps, tmp_path: Path
) -> None:
    start_sync(engine, apps)
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', NULL, NULL)")
    engine.wait_idle(timeout=60)
    moved = tmp_path / "moved" / "finance.db"
    moved.parent.mkdir()
    engine.add_app("finance", apps.urls["finance"])  # the same URL again: nothing changes
    shutil.copy(apps.finance_path, moved)
    with pytest.raises(AppError, match=r"cannot change while map.* 'customers' play"):
        engine.add_app("finance", f"sqlite:///{moved}")

    engine.pause("customers")
    apps.finance.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(apps.finance_path, moved)  # the same database, moved while the map pauses
    engine.add_app("finance", f"sqlite:///{moved}")
    assert engine.apps()["finance"] == f"sqlite:///{moved}"
    engine.play("customers")
    new_home = connect(moved)
    new_home.execute("UPDATE customers SET name = 'Contoso (moved)' WHERE account = 'C1'")
    wait_until(lambda: apps.right()["C1"][1] == "Contoso (moved)", 60, "the moved app's edit")
    apps.crm.execute("UPDATE accounts SET telephone = '555' WHERE account_number = 'C1'")
    wait_until(
        lambda: new_home.execute("SELECT phone FROM customers").fetchall() == [("555",)],
        60,
        "crm's edit in the moved app",
    )
    assert apps.left()["C1"][1] == "Contoso"  # the old file is no longer written
