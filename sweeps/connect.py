"""Opening a results store: the one path every command takes (`sweeps.store.Store` for the
sweep and results commands, `analysis.load.read_store` for analyze and plan).

From the URL to a checked engine, before anything is read or written:
- the URL: `sqlite:///results/runs.db` (three slashes: a path RELATIVE to the working
  directory), `sqlite:////abs/runs.db` (four: absolute), `postgresql://user@host:port/db`
  (psycopg 3). Another driver (`postgresql+psycopg2://`) or backend is refused with the
  fix. Messages name a SQLite store by its absolute path, and say when the URL was
  relative, so nobody has to guess where `sqlite:///` put it;
- a SQLite file (`check_sqlite_file`): a folder, a file that is not SQLite (text,
  random bytes), a truncated or page-corrupted database are refused with one line,
  through a read-only connection (nothing is written, no journal is left). A missing
  file is created only by the commands that make stores (`create=True`: `sweep run`,
  `results import`, `demo`); the others refuse it, so a misspelt path creates nothing;
- the schema (`check_schema`): a store from a newer program and tables this program did
  not make are refused; an older one is migrated by `Store` and read as it is by the
  analysis.
A refused store is bad input (BadInput, exit 2; nothing was changed); a server that
cannot be reached or a lock that is never released is a runtime failure (exit 1).
Light on purpose (SQLAlchemy, sqlite3 and the table definitions; no jax): `analysis`
imports it.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event, exc

from scaling.errors import BadInput, RuntimeFailure, redact
from sweeps.schema import SCHEMA_VERSION

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
BUSY_SECONDS = 60  # wait this long for another process's write lock (8 workers queue behind each other)
_DRIVERS = {"sqlite": ("sqlite", "sqlite+pysqlite"), "postgresql": ("postgresql", "postgresql+psycopg")}


def parse_url(url: str) -> sa.URL:
    """The URL, or BadInput naming the fix (not a URL, another backend or driver)."""
    try:
        parsed = sa.engine.make_url(url)
    except exc.ArgumentError:
        raise BadInput(f"store: {redact(url)!r} is not a database URL; use sqlite:///path/runs.db "
                       "or postgresql://user@host:port/db") from None
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise BadInput(f"store: backend {backend!r} is not supported; use sqlite:///... or postgresql://...")
    if parsed.drivername not in _DRIVERS[backend]:
        raise BadInput(f"store: driver {parsed.drivername!r} is not supported; use {backend}://... "
                       + ("(psycopg 3)" if backend == "postgresql" else ""))
    if backend == "sqlite" and (not parsed.database or parsed.database == ":memory:"):
        raise BadInput("store: an in-memory SQLite store cannot be shared by workers; use sqlite:///path/runs.db")
    return parsed


def sqlite_path(url: str | sa.URL) -> Path | None:
    """The absolute path of a SQLite store's file (None for a server)."""
    parsed = parse_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return None
    return Path(parsed.database).absolute()


def describe(url: str) -> str:
    """Where a store is, as it may be printed: a SQLite file's absolute path (saying when
    the URL was relative to the working directory), a server's URL without its password."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return redact(url)
    path = Path(parsed.database)
    if path.is_absolute():
        return str(path)
    return f"{path.absolute()} (sqlite:///{parsed.database} is relative to the working directory)"


def check_sqlite_file(url: str, *, create: bool) -> None:
    """Refuse a SQLite store file that cannot be a results store, reading it only.

    Missing: BadInput unless `create` (then its folder is made). Present: it must be a
    file, start with the SQLite header, be as long as its header says, and pass
    `PRAGMA quick_check` (every page of every table and index read back) through a
    read-only connection. A 0-byte file is an empty database (`create` fills it in)."""
    path = sqlite_path(url)
    where = describe(url)
    if path.is_dir():
        raise BadInput(f"store: {path} is a folder; give the database file, e.g. sqlite:///{path}/runs.db")
    if not path.exists():
        if not create:
            raise BadInput(f"store: {where} does not exist; run `scaling sweep run` first or pass --store")
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInput(f"store: cannot create the folder of {where} ({err.strerror}); "
                           "choose another --store") from None
        return
    try:
        with open(path, "rb") as f:
            head = f.read(100)
        size = path.stat().st_size
    except OSError as err:
        raise BadInput(f"store: cannot read {where} ({err.strerror}); check the path and its permissions") from None
    if size == 0:
        if not create:
            raise BadInput(f"store: {where} is an empty file, not a results store; run `scaling sweep run` "
                           "first or pass --store")
        return
    if not head.startswith(SQLITE_MAGIC):
        raise BadInput(f"store: {where} is not a SQLite database (it starts with {head[:16]!r}); nothing was "
                       "changed: move it aside or use another --store")
    corrupt = (f"store: {where} is a corrupt SQLite database ({{why}}); nothing was changed: restore a copy "
               "or use another --store")
    if len(head) < 100:
        raise BadInput(corrupt.format(why=f"{size} bytes, shorter than its 100-byte header"))
    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_SECONDS, isolation_level=None)
    except sqlite3.Error as err:
        raise BadInput(f"store: cannot open {where} ({err}); check the path and its permissions") from None
    try:
        # A read transaction (SQLite's shared lock): no writer commits while the header,
        # the size and every page are read, so a busy store is seen whole.
        con.execute("BEGIN")
        con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        with open(path, "rb") as f:
            head = f.read(100)
        size = path.stat().st_size
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        pages = int.from_bytes(head[28:32], "big")
        header_valid = head[24:28] == head[92:96]  # the in-header size is valid (SQLite >= 3.7.0 writers)
        if page < 512 or page & (page - 1) or size % page or (header_valid and pages and size < pages * page):
            raise BadInput(corrupt.format(why=f"{size} bytes, truncated: its header says {pages} pages of "
                                              f"{page} bytes"))
        rows = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError as err:
        if "malformed" in str(err) or "not a database" in str(err):
            raise BadInput(corrupt.format(why=str(err).strip().splitlines()[0])) from None
        # Locked past the busy wait, or a hot journal a read-only connection may not roll
        # back (a writer was killed mid-transaction): the store's own connection recovers
        # it, and its errors are translated there (sweeps.store._translate).
        return
    except sqlite3.DatabaseError as err:
        raise BadInput(corrupt.format(why=str(err).strip().splitlines()[0])) from None
    finally:
        con.close()
    if [r[0] for r in rows] != ["ok"]:
        found = [line for r in rows for line in str(r[0]).splitlines() if line and not line.startswith("***")]
        raise BadInput(corrupt.format(why=f"quick_check: {(found or ['failed'])[0]}"))


def make_engine(url: str, *, create: bool = True, read_only: bool = False) -> sa.Engine:
    """An engine with the claim semantics each backend needs, after the checks above.
    SQLite: every transaction starts with BEGIN IMMEDIATE (the write lock up front, so a
    claim's SELECT and UPDATE are atomic); PostgreSQL: psycopg 3, a 5 s connect timeout.
    `read_only` (the analysis): a SQLite file opened read-only, taking no write lock."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        check_sqlite_file(url, create=create and not read_only)
        if read_only:
            uri = f"{sqlite_path(parsed).as_uri()}?mode=ro"
            return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=BUSY_SECONDS))
        engine = sa.create_engine(parsed, connect_args={"timeout": BUSY_SECONDS})

        @event.listens_for(engine, "connect")
        def _no_implicit_tx(dbapi_conn, _record):
            # Hand transaction control to SQLAlchemy's "begin" event below
            # (the pysqlite recipe in SQLAlchemy's SQLite dialect docs).
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True,
                            connect_args={"connect_timeout": 5})


def check_schema(conn: sa.Connection, url: str, *, create: bool) -> int | None:
    """The store's schema version, or None for an empty database (`create`: the caller
    makes the schema; else BadInput). Refuses tables another program made, and a store
    from a newer program (BadInput; nothing is changed)."""
    tables = set(sa.inspect(conn).get_table_names())
    if "schema_info" not in tables:
        if tables & {"trials", "metrics"}:
            raise BadInput(f"store: {describe(url)} has trials/metrics tables but no schema_info; it was not made "
                           "by this program; use another --store (nothing was changed)")
        if not create:
            raise BadInput(f"store: {describe(url)} holds no results store (no tables); run `scaling sweep run` "
                           "first or pass --store")
        return None
    version = conn.execute(sa.text("SELECT version FROM schema_info")).scalar()
    if version is None:
        raise BadInput(f"store: {describe(url)} has an empty schema_info table; it is damaged: restore a copy "
                       "or use another --store (nothing was changed)")
    if version > SCHEMA_VERSION:
        raise BadInput(f"store: {describe(url)} has schema version {version}, this program knows up to "
                       f"{SCHEMA_VERSION}; upgrade convnet-scaling (nothing was changed)")
    return int(version)


def translate(err: Exception, url: str) -> Exception:
    """A backend error as one line: a store that is not usable as it is (not a database,
    corrupt, read-only) is bad input (exit 2); one that is busy or unreachable is a
    runtime failure (exit 1, and a worker retries it)."""
    if isinstance(err, (RuntimeFailure, BadInput)):
        return err
    orig = getattr(err, "orig", err)
    where = describe(url)
    if isinstance(orig, sqlite3.DatabaseError) and "not a database" in str(orig):
        return BadInput(f"store: {where} is not a valid SQLite database (corrupt or another file); nothing was "
                        "changed: move it aside or use another --store")
    if isinstance(orig, sqlite3.DatabaseError) and "malformed" in str(orig):
        return BadInput(f"store: {where} is a corrupt SQLite database ({one_line(orig)}); nothing was changed: "
                        "restore a copy or use another --store")
    if isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig):
        return RuntimeFailure(f"store: {where} stayed locked by another process for 60 s; retry, or use "
                              "PostgreSQL for many workers")
    if isinstance(orig, sqlite3.OperationalError) and ("readonly" in str(orig) or "unable to open" in str(orig)):
        return BadInput(f"store: cannot write {where} ({one_line(orig)}); use a writable --store")
    if isinstance(orig, sqlite3.OperationalError):
        return RuntimeFailure(f"store: SQLite error on {where} ({one_line(orig)}); check the path and its "
                              "permissions")
    if isinstance(err, (exc.OperationalError, exc.InterfaceError)):
        return RuntimeFailure(f"store: cannot reach {where} ({one_line(err)}); check the server is up "
                              "and the URL is right")
    return err


def one_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return text[0] if text else type(err).__name__
