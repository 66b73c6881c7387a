"""Which vLLM release's memory accounting a plan follows, and what the plan says about that choice.

The rules themselves are ``memory.accounting_for``; this module names the modelled range and explains the choice
(installed release, asked release, or the newest modelled one) so that the plan never follows a release silently.
"""

from __future__ import annotations

from qwendeploy.core.memory import CURRENT_VLLM, parse_version

OLDEST_MODELLED = "0.8"
"""The oldest release whose accounting was read in vLLM's source (0.8.5's wheel; 0.8–0.18 each have their rules in
``memory.accounting_for``, docs/memory-model.md). Older releases (the V0 engine by default) follow 0.8's rules."""

NEWEST_MODELLED = CURRENT_VLLM


def release_note(vllm_version: str, source: str) -> str:
    """One line for the plan: which release's accounting it follows and why.

    Args:
        vllm_version: the release planned for.
        source: ``installed`` (read from the installed vLLM's package metadata), ``asked`` (--vllm-version) or
            empty (no vLLM installed: the newest modelled release).
    """
    v = parse_version(vllm_version)
    why = {
        "installed": "the vLLM installed here (package metadata)",
        "asked": "--vllm-version",
    }.get(source, f"no vLLM is installed here, so the newest modelled release ({NEWEST_MODELLED})")
    line = f"Memory accounting of vLLM {v[0]}.{v[1]}, from {why}."
    if v > parse_version(NEWEST_MODELLED):
        line += (
            f" It is newer than the newest modelled release ({NEWEST_MODELLED}): the plan uses {NEWEST_MODELLED}'s "
            "rules, unchecked against this release."
        )
    elif v < parse_version(OLDEST_MODELLED):
        line += (
            f" It is older than the oldest modelled release ({OLDEST_MODELLED}): the plan uses "
            f"{OLDEST_MODELLED}'s rules, unchecked against this release."
        )
    return line
