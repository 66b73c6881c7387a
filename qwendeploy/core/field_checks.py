"""The checks of one profile field value (names, hosts, interface names, vLLM arguments): plain functions raising
ValueError, used by the profile's validators and by ``plan``'s flag checks, which must not import pydantic."""

from __future__ import annotations

import re

from qwendeploy.core import limits
from qwendeploy.core.limits import MAX_STRING

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MULTILINE_OK = frozenset({"generated_by", "extra_args"})
"""Strings that may hold a line break or a tab (a command line; a verbatim vLLM argument). NUL never."""


def _check_text(field: str, value: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{field} holds a NUL character")
    if len(value) > MAX_STRING:
        raise ValueError(f"{field} is longer than {MAX_STRING} characters")
    if field not in _MULTILINE_OK and _CONTROL.search(value):
        raise ValueError(f"{field} holds a line break or another control character")


def _no_leading_dash(value: str | None) -> str | None:
    """A value that becomes a vLLM argument must not read as a flag (``model.id: --trust-remote-code``)."""
    if value is not None and value.startswith("-"):
        raise ValueError("must not start with '-' (vLLM would read it as a flag)")
    return value


def check_argument(value: str) -> str:
    """A one-line value that becomes a vLLM argument (revision, quantization, …): no control character, at most
    ``MAX_STRING`` characters, not starting with ``-``. Raises ValueError."""
    _check_text("the value", value)
    _no_leading_dash(value)
    return value


def check_name(value: str) -> str:
    """A profile name is a safe file stem (it names the log and lock files). Raises ValueError."""
    if not value or len(value) > limits.MAX_NAME or not limits.NAME_RE.fullmatch(value):
        raise ValueError(
            f"must be 1-{limits.MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(it names the log files), e.g. qwen2.5-7b-instruct"
        )
    return value


def check_host(value: str) -> str:
    """A bind address: an IP address or host name, nothing a shell or a URL would read differently."""
    if not value or len(value) > 255 or not limits.HOST_RE.fullmatch(value):
        raise ValueError("must be an IP address or a host name such as 127.0.0.1, 0.0.0.0, ::1 or node1.local")
    return value


def check_ifname(value: str) -> str:
    """A network interface name such as eth0 or ens5f0np0."""
    if not limits.IFNAME_RE.fullmatch(value):
        raise ValueError(
            "must be a network interface name such as eth0 or ens5f0np0 (at most 15 characters; NCCL's "
            "comma-separated list and ^/= prefixes allowed)"
        )
    return value


def check_env_name(value: str) -> str:
    """A POSIX environment variable name (letters, digits, underscore; not starting with a digit)."""
    if not limits.ENV_NAME_RE.fullmatch(value) or len(value) > 256:
        raise ValueError(f"{limits.shown(value, 60)} is not an environment variable name (letters, digits, _)")
    return value
