"""Where the tests find the project's shared material: ../shared beside the checkout, or $QWENDEPLOY_SHARED.

Tests that read it skip (or check less) when it is absent; none reaches it by an absolute path.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("QWENDEPLOY_SHARED") or REPO_ROOT.parent / "shared")
