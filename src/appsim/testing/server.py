"""The real appsim HTTP server as a subprocess on loopback, for integration tests and benchmarks.

``appsim serve`` (``python -m appsim.cli serve``; or ``python -m uvicorn <factory> --factory``) is started
on ``127.0.0.1`` and a free port, in its own process group (so that stopping it also stops its worker
processes), with its output (stdout and stderr) appended to a log file::

    from appsim.testing.server import serve_subprocess

    with serve_subprocess(config=tmp / "config.yaml", workers=2, log=tmp / "server.log") as server:
        httpx.get(server.url + "/find-similar", ...)
        print(server.log_tail())

The context manager waits until ``GET /health/ready`` answers 200 and, on exit, stops the server: SIGTERM
to its process group, SIGKILL of the group if it has not exited in time. :class:`ServerProcess` gives the
finer control (start without waiting, a graceful SIGTERM to the main process only, the exit status).

The server's environment is this process's, without any ``APPSIM_*`` variable and without
``PROMETHEUS_MULTIPROC_DIR`` (the caller's settings must not leak into the server under test), plus
``APPSIM_CONFIG`` (the ``config`` argument), ``PYTHONUNBUFFERED=1`` and the ``env`` argument.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

HOST = "127.0.0.1"
READY_PATH = "/health/ready"
POLL_S = 0.2
StrPath = str | os.PathLike[str]

__all__ = ["HOST", "ServerProcess", "ServerStartError", "free_port", "serve_subprocess", "server_env"]


class ServerStartError(RuntimeError):
    """The server exited or did not answer ``/health/ready`` with 200 in time (the log tail is included)."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; another process may still take it
    before the server binds it: see ``attempts`` of :meth:`ServerProcess.start`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_env(config: StrPath | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ``os.environ`` without ``APPSIM_*`` and ``PROMETHEUS_MULTIPROC_DIR``, then
    ``APPSIM_CONFIG=config`` (when given), ``PYTHONUNBUFFERED=1`` and ``env`` (which wins)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("APPSIM_")}
    out.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if config is not None:
        out["APPSIM_CONFIG"] = str(config)
    out["PYTHONUNBUFFERED"] = "1"
    out.update(env or {})
    return out


class ServerProcess:
    """One appsim server subprocess on ``host`` (``127.0.0.1``) and a free port.

    Args:
        config: the YAML config file, passed as ``APPSIM_CONFIG``.
        log: file the server's stdout and stderr are appended to (default: a new temporary file).
        workers: ``--workers``.
        env: extra environment variables (see :func:`server_env`).
        cwd: the server's working directory (default: this process's).
        log_level: uvicorn's ``--log-level`` (appsim's own JSON log level comes from the config).
        uvicorn_factory: run ``python -m uvicorn <uvicorn_factory> --factory`` (e.g.
            ``"appsim.app:app_factory"``) instead of ``python -m appsim.cli serve``.
        extra_args: more command-line arguments, appended.
        host: the address to bind.
        timeout: default seconds :meth:`start` waits for readiness.

    Attributes: ``port``, ``url`` (``http://host:port``), ``log`` (a :class:`~pathlib.Path`) and ``proc``
    (the :class:`subprocess.Popen`, ``None`` until started). Used as a context manager it starts (unless
    already started) and :meth:`stop`\\ s on exit.
    """

    def __init__(
        self,
        *,
        config: StrPath | None = None,
        log: StrPath | None = None,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        cwd: StrPath | None = None,
        log_level: str = "info",
        uvicorn_factory: str | None = None,
        extra_args: Sequence[str] = (),
        host: str = HOST,
        timeout: float = 120.0,
    ) -> None:
        self.config, self.workers, self.env, self.cwd = config, workers, dict(env or {}), cwd
        self.log_level, self.uvicorn_factory, self.extra_args = log_level, uvicorn_factory, list(extra_args)
        self.host, self.timeout = host, timeout
        if log is None:
            fd, name = tempfile.mkstemp(prefix="appsim-server-", suffix=".log")
            os.close(fd)
            log = name
        self.log = Path(log)
        self.port = free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """``appsim serve`` (or uvicorn) on ``host``, ``port`` with ``workers``, ``log_level``, extra args."""
        if self.uvicorn_factory is None:
            head = [sys.executable, "-m", "appsim.cli", "serve"]
        else:
            head = [sys.executable, "-m", "uvicorn", self.uvicorn_factory, "--factory"]
        return [*head, "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
                "--log-level", self.log_level, *self.extra_args]  # fmt: skip

    # ------------------------------------------------------------------------------------------- start

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process (its own process group, output appended to ``log``) without waiting."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.cwd, env=server_env(self.config, self.env), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self.proc

    def start(
        self,
        timeout: float | None = None,
        *,
        ready: Callable[[ServerProcess], bool] | None = None,
        streak: int = 1,
        attempts: int = 1,
    ) -> ServerProcess:
        """:meth:`launch`, then :meth:`wait_ready`. On failure the process group is killed and, while
        ``attempts`` remain, the server is started again on a new free port; the last failure raises
        :class:`ServerStartError`. Returns ``self``."""
        for attempt in range(attempts):
            if attempt:
                self.port = free_port(self.host)
            self.launch()
            try:
                return self.wait_ready(timeout, ready=ready, streak=streak)
            except ServerStartError:
                self.kill()
                if attempt == attempts - 1:
                    raise
        raise ServerStartError("attempts must be >= 1")

    def wait_ready(
        self,
        timeout: float | None = None,
        *,
        ready: Callable[[ServerProcess], bool] | None = None,
        streak: int = 1,
    ) -> ServerProcess:
        """Wait (at most ``timeout`` s, default ``self.timeout``) until ``GET /health/ready`` answered 200
        ``streak`` times in a row, each over a fresh connection (with several workers the kernel spreads
        them, so a long streak means every worker is up), and ``ready(self)`` (if given) is true.

        Raises :class:`ServerStartError` if the process exits or the time runs out (it is left running)."""
        if self.proc is None:
            raise ServerStartError("the server was not started")
        timeout = self.timeout if timeout is None else timeout
        deadline, ok_in_a_row = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            ok = False
            with contextlib.suppress(httpx.HTTPError):
                ok = httpx.get(self.url + READY_PATH, timeout=2.0).status_code == 200
            ok_in_a_row = ok_in_a_row + 1 if ok else 0
            if ok_in_a_row >= streak and (ready is None or ready(self)):
                return self
            time.sleep(0.05 if ok else POLL_S)
        raise ServerStartError(f"server not ready within {timeout} s:\n{self.log_tail()}")

    # ------------------------------------------------------------------------------------------ output

    def output(self) -> str:
        """Everything the server has written to ``log`` so far (undecodable bytes replaced)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of :meth:`output` (for failure messages)."""
        return "\n".join(self.output().splitlines()[-lines:])

    def log_count(self, text: str) -> int:
        """How many times ``text`` occurs in the output (e.g. ``'"event": "model versions loaded"'``, one
        line per worker that has loaded its models)."""
        return self.output().count(text)

    # -------------------------------------------------------------------------------------------- stop

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = 40.0) -> int | None:
        """Graceful shutdown as an orchestrator does it: SIGTERM to the main process only (with several
        workers uvicorn's supervisor forwards it), then wait up to ``timeout`` s. Returns the exit status;
        ``None`` if it was never started or did not exit in time (then the group is SIGKILLed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM to the whole process group; SIGKILL of the group after ``timeout`` s (at once if the main
        process has already exited: left-over workers). Never raises; returns the main process's exit
        status (``None`` if never started or still not reaped)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
                return self.proc.returncode
            except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
                pass
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the main process (cleanup); never raises."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self if self.proc is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def serve_subprocess(
    config: StrPath | None = None,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    cwd: StrPath | None = None,
    log: StrPath | None = None,
    log_level: str = "info",
    uvicorn_factory: str | None = None,
    extra_args: Sequence[str] = (),
    ready: Callable[[ServerProcess], bool] | None = None,
    streak: int = 1,
    attempts: int = 1,
) -> Iterator[ServerProcess]:
    """Start a :class:`ServerProcess`, wait until it is ready (see :meth:`ServerProcess.start`), yield it,
    and :meth:`~ServerProcess.stop` it on exit, whatever happens."""
    server = ServerProcess(
        config=config,
        log=log,
        workers=workers,
        env=env,
        cwd=cwd,
        log_level=log_level,
        uvicorn_factory=uvicorn_factory,
        extra_args=extra_args,
        timeout=timeout,
    )
    server.start(ready=ready, streak=streak, attempts=attempts)
    try:
        yield server
    finally:
        server.stop()
