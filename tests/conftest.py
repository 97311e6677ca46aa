"""Shared fixtures: a real PostgreSQL for the store tests, one fresh database per test.

`make test` starts the server with scripts/postgres.sh and exports its URL as
SCALING_TEST_PG_URL. Without it, the fixture starts the same throw-away server itself
(under a file lock, so parallel pytest workers share one) and skips the PostgreSQL
tests with the reason if no server can be had.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "postgres.sh"


def _reachable(url: str) -> str | None:
    """None if we can connect, else the reason."""
    import sqlalchemy as sa

    try:
        eng = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        eng.dispose()
        return None
    except Exception as err:  # noqa: BLE001 - any failure means "no server"
        return str(err).splitlines()[0]


def _script_url() -> str:
    out = subprocess.run(["bash", str(SCRIPT), "url"], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    url = os.environ.get("SCALING_TEST_PG_URL", "").strip()
    if url:
        why = _reachable(url)
        if why:
            pytest.skip(f"SCALING_TEST_PG_URL={url} is not reachable: {why}")
        return url
    with open("/tmp/scaling-test-pg.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one pytest worker starts the server
        url = _script_url()
        if not url or _reachable(url):
            out = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
            url = _script_url()
            if not url:
                pytest.skip(f"no PostgreSQL server: scripts/postgres.sh start said: {out.stderr.strip()[-300:]}")
    why = _reachable(url)
    if why:
        pytest.skip(f"PostgreSQL at {url} is not reachable: {why}")
    return url


@pytest.fixture
def pg_url(pg_server_url):
    """A fresh database on the test server, dropped afterwards."""
    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield sa.engine.make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> str:
    """The same store tests on both backends."""
    if request.param == "sqlite":
        (tmp_path / "store").mkdir()
        return f"sqlite:///{tmp_path / 'store' / 'runs.db'}"
    return request.getfixturevalue("pg_url")
