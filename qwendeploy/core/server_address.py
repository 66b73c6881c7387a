"""The OpenAI-compatible server's address, PURE: the bind address and port every profile and command falls back to
(``server.host``, ``server.port``, ``plan --host/--port``), and the address a client on this host uses to reach a
server bound to one."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
"""Loopback: nothing outside this host reaches the server unless the profile binds wider (then with an API key)."""
DEFAULT_PORT = 8000
"""vLLM's own default ``--port``; data-parallel servers take port, port+1, …"""

_WILDCARD_BINDS = ("0.0.0.0", "::", "")


def client_host(bind_host: str) -> str:
    """The host a client on this machine connects to: IPv4 loopback for a wildcard bind, else the bind address."""
    return "127.0.0.1" if bind_host in _WILDCARD_BINDS else bind_host
