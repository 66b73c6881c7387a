"""Regenerate tests/fixtures/dryrun/*.json: the `serve --dry-run --json` servers of every curated profile.

Run after changing vllm_args.py or a profile, review the diff like code:
    python scripts/gen_dryrun_goldens.py          # write
    python scripts/gen_dryrun_goldens.py --check  # exit 1 if a golden is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"
GOLDEN = ROOT / "tests" / "fixtures" / "dryrun"
GOLDEN_ENV = {"QWENDEPLOY_API_KEY": "golden-placeholder-key"}
"""The environment the goldens are built from (a stand-in key, for profiles that name one)."""


def golden_for(path: Path) -> str:
    from qwendeploy.adapters.profile_files import read_profile
    from qwendeploy.core.vllm_args import build_launch_specs, render_spec

    prof = read_profile(path)
    env = dict(GOLDEN_ENV)
    if prof.server.api_key_env:
        env[prof.server.api_key_env] = "golden-placeholder-key"
    specs = build_launch_specs(prof, vllm_bin="vllm", base_env=env)
    servers = [{k: v for k, v in render_spec(s).items() if k != "command"} for s in specs]
    return json.dumps({"profile": path.name, "servers": servers}, indent=2) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    stale = []
    for path in sorted(PROFILES.glob("*.yaml")):
        target = GOLDEN / (path.stem + ".json")
        text = golden_for(path)
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
    if stale:
        print("stale dry-run goldens: " + ", ".join(stale) + " (run python scripts/gen_dryrun_goldens.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
