"""A real, throwaway PostgreSQL server for the integration tests (pytest-postgresql's executor).

How the server is started
-------------------------
* ``pg_ctl`` is looked up in this order: ``$APPSIM_PG_CTL``, pytest-postgresql's ``--postgresql-exec``
  option (when that file exists), ``pg_ctl`` on ``PATH``, the newest
  ``/usr/lib/postgresql/*/bin/pg_ctl`` (Debian/Ubuntu's ``postgresql`` package), ``pg_config --bindir``.
  Only when none exists are the PostgreSQL tests skipped (set ``APPSIM_REQUIRE_POSTGRES=1`` to fail instead).
* The cluster lives in a fresh ``/tmp/appsim-pg-*`` folder: ``initdb`` (trust auth, superuser
  ``postgres``), then ``pg_ctl start`` on 127.0.0.1 and a free port, fsync off (throwaway data).
* PostgreSQL refuses to run as root. As root, every ``pg_ctl`` call goes through a tiny wrapper that drops
  to the ``postgres`` system user (created by Debian's ``postgresql`` package), or to ``nobody`` when there
  is no such user; the folder is chowned to that user. pytest-postgresql's ``postgresql_proc`` factory
  cannot be used as is: it puts the data folder under pytest's ``/tmp/pytest-of-root`` (mode 0700), which
  the unprivileged server user cannot enter. The same ``PostgreSQLExecutor`` and ``DatabaseJanitor`` that
  factory uses are used here instead.
* Each test gets its own database (``pg_url``), dropped afterwards.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import port_for
import pytest
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

PG_USER = "postgres"  # the database superuser created by initdb (not the OS user)

_WRAPPER = """#!{python}
# Runs pg_ctl as {user!r}: PostgreSQL refuses to run as root.
import os, sys
os.setgroups([])
os.setgid({gid})
os.setuid({uid})
os.environ["HOME"] = {home!r}
os.environ["USER"] = os.environ["LOGNAME"] = {user!r}
os.chdir({workdir!r})
os.execv({pg_ctl!r}, [{pg_ctl!r}, *sys.argv[1:]])
"""


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parts
    try:
        return tuple(int(p) for p in parts[-3].split("."))
    except (ValueError, IndexError):
        return (0,)


def find_pg_ctl(configured: str | None = None) -> str | None:
    """The pg_ctl to use, or None when this machine has none (see the module docstring for the order)."""
    candidates: list[str | None] = [os.environ.get("APPSIM_PG_CTL"), configured, shutil.which("pg_ctl")]
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key, reverse=True)
    candidates += debian
    try:
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        if bindir:
            candidates.append(os.path.join(bindir, "pg_ctl"))
    except (OSError, subprocess.SubprocessError):
        pass
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _server_account() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(
        "running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL"
    )


def _workdir_parent() -> str | None:
    """Where to make the cluster's folder: the temp dir, unless the unprivileged server user could not
    reach it (an ancestor without the others-execute bit, e.g. TMPDIR under /root), then /tmp."""
    if os.geteuid() != 0:
        return None
    path = Path(tempfile.gettempdir()).resolve()
    for folder in (path, *path.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return "/tmp"
    return None


class PgServer:
    """A PostgreSQL cluster in its own folder. ``stop()`` / ``start()`` may be called repeatedly."""

    _db_counter = itertools.count()

    def __init__(self, pg_ctl: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="appsim-pg-", dir=_workdir_parent()))
        executable = pg_ctl
        self.os_user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            account = _server_account()
            self.os_user = account.pw_name
            os.chown(self.workdir, account.pw_uid, account.pw_gid)
            wrapper = self.workdir / f"pg_ctl-as-{account.pw_name}"
            wrapper.write_text(
                _WRAPPER.format(
                    python=sys.executable,
                    user=account.pw_name,
                    uid=account.pw_uid,
                    gid=account.pw_gid,
                    home=str(self.workdir),
                    workdir=str(self.workdir),
                    pg_ctl=pg_ctl,
                )
            )
            wrapper.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
            executable = str(wrapper)
        self.host = "127.0.0.1"
        self.port = port_for.select_random()
        self.executor = PostgreSQLExecutor(
            executable=executable,
            host=self.host,
            port=self.port,
            datadir=str(self.workdir / "data"),
            unixsocketdir=str(self.workdir),
            logfile=str(self.workdir / "postgresql.log"),
            startparams="-w -t 60",
            dbname="tests",
            user=PG_USER,
            postgres_options="-c fsync=off -c full_page_writes=off -c synchronous_commit=on",
            timeout=90,
        )

    def start(self) -> None:
        try:
            self.executor.start()
        except Exception as exc:
            raise RuntimeError(f"PostgreSQL did not start ({exc}); log:\n{self.log_tail()}") from exc

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, committed data is kept."""
        self.executor.stop()

    def running(self) -> bool:
        return self.executor.running()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(
                (self.workdir / "postgresql.log").read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError as exc:
            return f"(no log: {exc})"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@{self.host}:{self.port}/{dbname}"

    def _janitor(self, dbname: str) -> DatabaseJanitor:
        return DatabaseJanitor(
            user=PG_USER, host=self.host, port=self.port, dbname=dbname, connection_timeout=30
        )

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = f"appsim_{os.getpid()}_{next(self._db_counter)}"
        self._janitor(name).init()
        return name

    def drop_database(self, name: str) -> None:
        self._janitor(name).drop()

    def close(self) -> None:
        try:
            if self.executor.running():
                self.executor.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_pg_server(request: pytest.FixtureRequest) -> PgServer:
    """Start a throwaway server; skip when no pg_ctl exists (fail instead with APPSIM_REQUIRE_POSTGRES=1)."""
    pg_ctl = find_pg_ctl(request.config.getoption("postgresql_exec", None))
    if pg_ctl is None:
        reason = (
            "no pg_ctl found (PATH, /usr/lib/postgresql/*/bin, pg_config, $APPSIM_PG_CTL): "
            "install the PostgreSQL server, e.g. `apt-get install postgresql`"
        )
        if os.environ.get("APPSIM_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    server = PgServer(pg_ctl)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def postgresql_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """One PostgreSQL server for the session (tests that stop a server start their own)."""
    server = start_pg_server(request)
    yield server
    server.close()


@pytest.fixture
def pg_url(postgresql_server: PgServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database on the session server, dropped after the test."""
    name = postgresql_server.create_database()
    yield postgresql_server.url(name)
    postgresql_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'events.sqlite'}"


@pytest.fixture(scope="module")
def private_postgresql_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """A server of the module's own, for tests that stop and restart it (outage tests)."""
    server = start_pg_server(request)
    yield server
    server.close()
