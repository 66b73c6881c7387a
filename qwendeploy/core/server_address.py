"""The OpenAI-compatible server's address, PURE: the bind address and port every profile and command falls back to
(``server.host``, ``server.port``, ``plan --host/--port``), and the address a client on this host uses to reach a
server bound to one."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
"""Loopback: nothing outside this host reaches the server unless the profile binds wider (then with an API key)."""
DEFAULT_PORT = 8000
"""vLLM's own default ``--port``; data-parallel servers take port, port+1, …"""

_LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}
"""A wildcard bind answers on this host's loopback of the same family (an IPv6-only stack has no 127.0.0.1)."""


def client_host(bind_host: str) -> str:
    """The host a client on this machine connects to: the loopback of the wildcard's family for a wildcard bind,
    else the bind address."""
    return _LOOPBACK_FOR_WILDCARD.get(bind_host, bind_host)


def http_url(host: str, port: int) -> str:
    """``http://HOST:PORT``, an IPv6 address in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def client_url(bind_host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to ``bind_host``."""
    return http_url(client_host(bind_host), port)
