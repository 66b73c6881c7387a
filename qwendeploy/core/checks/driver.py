"""NVML present, and the driver new enough for the CUDA that torch/vLLM were built for."""

from __future__ import annotations

from qwendeploy.core.checks import Check
from qwendeploy.core.machine_facts import MachineFacts, NvmlReport, SystemFacts

# Minimum Linux driver for each CUDA toolkit release (NVIDIA's CUDA release notes, "CUDA Toolkit and Corresponding
# Driver Versions", GA releases). Within one major version minor-version compatibility lets an older driver of the
# same major run the runtime, except kernels JIT-compiled from PTX (Triton, FlashInfer), which then fail with
# "the provided PTX was compiled with an unsupported toolchain" — so an older minor is a warning, an older major
# a failure. The per-release values were written from NVIDIA's release-notes table without re-checking a stored copy
# (the major-version floors 525.60.13 / 580.65.06 agree with NVIDIA's data-center support matrix: R535/R570 run
# CUDA 12.x, R580 CUDA 13.x through minor-version compatibility).
CUDA_MIN_DRIVER: dict[str, str] = {
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}
CUDA_MAJOR_MIN_DRIVER: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def check_nvml(facts: MachineFacts) -> Check:
    nv = facts.nvml
    if nv is None:
        why = (facts.nvml_error or "No NVIDIA GPU visible here: NVML is not available").rstrip(".")
        return Check(
            "nvml",
            "warn",
            f"{why}. GPU checks are skipped.",
            facts.nvml_hint
            or "Install the NVIDIA driver, or run the container with --gpus all (Docker) / the NVIDIA runtime.",
        )
    if not nv.gpus:
        return Check(
            "nvml",
            "warn",
            f"NVML works (driver {nv.driver_version or '?'}) but sees no GPU.",
            "Check CUDA_VISIBLE_DEVICES / the container's --gpus, and `nvidia-smi`.",
        )
    names = sorted({g.name for g in nv.gpus})
    return Check("nvml", "ok", f"NVML sees {len(nv.gpus)} GPU(s): {', '.join(names)}.")


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def _mm(v: str) -> str:
    parts = v.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else f"{parts[0]}.0"


def required_driver(cuda: str) -> str | None:
    """Minimum Linux driver for a CUDA toolkit version ("12.8" → "570.26"), None when unknown."""
    mm = _mm(cuda)
    if mm in CUDA_MIN_DRIVER:
        return CUDA_MIN_DRIVER[mm]
    known = sorted(CUDA_MIN_DRIVER, key=_version_tuple)
    below = [k for k in known if _version_tuple(k) <= _version_tuple(mm)]
    return CUDA_MIN_DRIVER[below[-1]] if below and below[-1].split(".")[0] == mm.split(".")[0] else None


def check_driver(nv: NvmlReport, sysf: SystemFacts) -> Check:
    drv, cuda = nv.driver_version, nv.cuda_driver_version
    detail = f"Driver {drv or '? (not reported)'}, supports CUDA {cuda or '?'}."
    build = sysf.torch_cuda
    if build is None or cuda is None:
        extra = "" if build else " No torch installed here to compare its CUDA build with."
        return Check("driver", "ok" if drv else "warn", detail + extra, "" if drv else "nvidia-smi should show it.")
    need = required_driver(build)
    need_text = f" (driver ≥ {need})" if need else ""
    b, c = _version_tuple(_mm(build)), _version_tuple(_mm(cuda))
    detail += f" torch is built for CUDA {build}{need_text}."
    if b[0] > c[0]:
        return Check(
            "driver",
            "fail",
            detail + f" A CUDA {b[0]} build cannot run on a driver that supports CUDA {cuda}.",
            f"Upgrade the NVIDIA driver to {need or f'a CUDA {build} capable release'} or newer, or install a "
            f"torch/vLLM build for CUDA {_mm(cuda)} (e.g. pip install torch --index-url "
            f"https://download.pytorch.org/whl/cu{_mm(cuda).replace('.', '')}).",
        )
    if b > c:
        return Check(
            "driver",
            "warn",
            detail + " Minor-version compatibility runs it, but kernels JIT-compiled from PTX (Triton, FlashInfer) "
            "can fail with 'the provided PTX was compiled with an unsupported toolchain'.",
            f"Upgrade the driver to {need or 'a newer release'} or newer.",
        )
    return Check("driver", "ok", detail)
