"""HTTP probes of a vLLM server: GET /health and GET /v1/models (urllib, loopback, short timeouts).

vLLM binds its port early but only *listens* once the engine is up, so during start-up /health is
"connection refused"; afterwards 200 while the engine lives and 503 once it died. /v1/models needs the API
key when the server has one (Authorization: Bearer). Proxies from the environment are ignored: these are
local probes.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from qwendeploy.core.server_address import client_url

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Probe:
    status: int | None
    """HTTP status, or None when there was no answer (refused, reset, timeout)."""
    body: bytes = b""
    error: str = ""


def get(url: str, *, timeout: float = 1.0, api_key: str | None = None) -> Probe:
    req = urllib.request.Request(url, method="GET")
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Probe(status=resp.status, body=resp.read(1 << 20))
    except urllib.error.HTTPError as e:
        return Probe(status=e.code, body=b"", error=str(e.reason))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return Probe(status=None, error=str(reason))


class HttpHealth:
    """Probes one server. ``api_key`` is only sent to /v1/models."""

    def __init__(self, host: str, port: int, *, api_key: str | None = None, timeout: float = 1.0) -> None:
        self.url = client_url(host, port)
        self.api_key = api_key
        self.timeout = timeout

    def health(self) -> Probe:
        return get(self.url + "/health", timeout=self.timeout)

    def models(self) -> Probe:
        return get(self.url + "/v1/models", timeout=self.timeout, api_key=self.api_key)

    def model_ids(self) -> list[str] | None:
        """Ids listed by /v1/models, or None when it did not answer 200 with the expected JSON."""
        p = self.models()
        if p.status != 200:
            return None
        try:
            data = json.loads(p.body)
            return [str(m["id"]) for m in data.get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
