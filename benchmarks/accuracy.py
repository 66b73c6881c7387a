"""Print the estimator-vs-published-logs table of docs/accuracy.md: ``python benchmarks/accuracy.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    spec = importlib.util.spec_from_file_location("test_accuracy", ROOT / "tests" / "core" / "test_accuracy.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["test_accuracy"] = mod
    spec.loader.exec_module(mod)
    head = ("settings", "weights published → predicted (GiB)", "error", "KV tokens published → predicted", "error")
    head = (*head, "source")
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|")
    for entry in mod.ENTRIES:
        _, r = mod.predict(entry)
        print(
            f"| {r.settings} | {r.weights_pub:.2f} → {r.weights_pred:.2f} | {r.weights_err:+.1f}% | "
            f"{r.tokens_pub:,} → {r.tokens_pred:,} | {r.tokens_err:+.1f}% | {r.source} |"
        )


if __name__ == "__main__":
    main()
