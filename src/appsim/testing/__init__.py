"""Helpers for testing code that uses appsim (like ``structlog.testing``): not imported by the service.

:mod:`appsim.testing.server` runs the real HTTP server as a subprocess (integration tests, benchmarks).
"""

from __future__ import annotations

from appsim.testing.server import ServerProcess, ServerStartError, free_port, serve_subprocess

__all__ = ["ServerProcess", "ServerStartError", "free_port", "serve_subprocess"]
