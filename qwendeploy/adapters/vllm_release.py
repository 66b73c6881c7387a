"""The vLLM release installed on this machine, read from package metadata (vLLM itself is never imported: importing
it takes seconds and may touch the GPU)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
from pathlib import Path

_VERSION_LINE = re.compile(r"^Version:\s*(\S+)\s*$", re.MULTILINE)


def _from_dist_info(site_packages: Path) -> str | None:
    for dist in sorted(site_packages.glob("vllm-*.dist-info")):
        try:
            text = (dist / "METADATA").read_text(encoding="utf-8", errors="replace")[:4096]
        except OSError:
            continue
        m = _VERSION_LINE.search(text)
        if m:
            return m.group(1)
    return None


def installed_vllm_version(path: str | None = None) -> str | None:
    """The installed vLLM's version, or None when none is installed.

    Looks in qwendeploy's own Python environment first, then next to the ``vllm`` executable on ``PATH`` (its
    virtualenv's ``lib/python*/site-packages/vllm-*.dist-info/METADATA``), which is the vLLM ``serve`` would run.

    Args:
        path: the ``PATH`` to search (default: the environment's).
    """
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        pass
    exe = shutil.which("vllm", path=path if path is not None else os.environ.get("PATH"))
    if exe is None:
        return None
    prefix = Path(exe).resolve().parent.parent
    for site in sorted(prefix.glob("lib/python3*/site-packages")):
        found = _from_dist_info(site)
        if found:
            return found
    return None
