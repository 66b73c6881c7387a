"""Each GPU's memory, the processes holding it, MIG and ECC."""

from __future__ import annotations

from qwendeploy.core.checks import Check, Status, size_text
from qwendeploy.core.hardware import BUSY_BYTES
from qwendeploy.core.machine_facts import NvmlGpu, NvmlProcess, NvmlReport
from qwendeploy.core.units import human_size


def _process_label(p: NvmlProcess) -> str:
    what = p.cmdline or p.name or "?"
    if len(what) > 60:
        what = what[:57] + "..."
    used = f" {human_size(p.used_bytes)}" if p.used_bytes is not None else ""
    if not p.visible:
        return f"PID {p.pid}{used} (not visible here: another container or PID namespace)"
    return f"PID {p.pid} {what}{used}"


def check_gpu_memory(g: NvmlGpu) -> Check:
    name = f"gpu[{g.index}].memory"
    cc = ".".join(map(str, g.compute_capability)) if g.compute_capability else "?"
    if g.memory_total is None:
        return Check(name, "skip", f"GPU {g.index} {g.name}: NVML does not report its memory.")
    reserved = g.memory_reserved
    cuda_total = g.memory_total - reserved if reserved is not None else None
    used = g.memory_used
    free = g.memory_free
    detail = (
        f"GPU {g.index} {g.name} (cc {cc}): total {size_text(g.memory_total)}"
        + (
            f" (CUDA sees {size_text(cuda_total)}; {size_text(reserved)} driver reserve)"
            if cuda_total is not None
            else ""
        )
        + f", used {size_text(used)}"
        + (" (NVML v1: includes the driver reserve)" if reserved is None else "")
        + f", free {size_text(free)}."
    )
    if used is not None and used > BUSY_BYTES:
        holders = ", ".join(_process_label(p) for p in g.processes) or (
            "NVML lists no process (it cannot see processes of other containers)"
        )
        return Check(
            name,
            "warn",
            detail + f" Held by: {holders}.",
            "vLLM needs free ≥ gpu_memory_utilization × total at start-up: free the GPU or lower "
            "--gpu-memory-utilization (see gpu_processes).",
        )
    return Check(name, "ok", detail)


def check_gpu_processes(nv: NvmlReport) -> Check:
    orphans: list[tuple[int, NvmlProcess]] = []
    others: list[tuple[int, NvmlProcess]] = []
    unknown: list[int] = []
    for g in nv.gpus:
        if "processes_compute" in g.unavailable and not g.processes:
            unknown.append(g.index)
        for p in g.processes:
            (orphans if p.orphan else others).append((g.index, p))
    if orphans:
        pids = sorted({p.pid for _, p in orphans})
        listing = "; ".join(f"GPU {i}: {_process_label(p)} (parent gone)" for i, p in orphans)
        return Check(
            "gpu_processes",
            "fail",
            f"Orphaned vLLM processes still hold GPU memory: {listing}.",
            f"kill {' '.join(map(str, pids))}   (then `kill -9 {' '.join(map(str, pids))}` if they survive 10 s)",
        )
    if others:
        listing = "; ".join(f"GPU {i}: {_process_label(p)}" for i, p in others)
        vllm = [p for _, p in others if p.vllm_role]
        status: Status = "warn"
        note = " A running vLLM server holds them." if vllm else ""
        visible = sorted({p.pid for _, p in others if p.visible and not p.vllm_role})
        fix = "Stop them before starting vLLM, or plan with the free memory (qwendeploy plan --gpus auto counts it)."
        if visible:
            fix += f" To end them: kill {' '.join(map(str, visible))}."
        return Check("gpu_processes", status, f"Processes hold GPU memory: {listing}.{note}", fix)
    if unknown:
        return Check(
            "gpu_processes",
            "skip",
            f"NVML would not list processes on GPU(s) {', '.join(map(str, unknown))} "
            f"({nv.gpus[unknown[0]].unavailable.get('processes_compute')}).",
        )
    return Check("gpu_processes", "ok", "No process holds GPU memory.")


def check_mig(nv: NvmlReport) -> Check:
    mig = [g for g in nv.gpus if g.mig_mode]
    pending = [g for g in nv.gpus if g.mig_pending is not None and g.mig_pending != g.mig_mode]
    if mig:
        desc = "; ".join(f"GPU {g.index}: {len(g.mig_devices)} MIG instance(s)" for g in mig)
        return Check(
            "mig",
            "warn",
            f"MIG is enabled ({desc}). CUDA sees MIG instances, not whole cards; vLLM cannot use tensor parallelism "
            "across MIG instances.",
            "Use a MIG instance's UUID in CUDA_VISIBLE_DEVICES for a small model, or disable MIG: "
            "sudo nvidia-smi -i <index> -mig 0 (then reset the GPU).",
        )
    if pending:
        return Check("mig", "warn", "A MIG mode change is pending a GPU reset.", "Reset the GPU or reboot.")
    if all(g.mig_mode is None for g in nv.gpus):
        return Check("mig", "skip", "MIG is not supported on these GPUs.")
    return Check("mig", "ok", "MIG is off.")


def check_ecc(nv: NvmlReport) -> Check:
    fails: list[str] = []
    warns: list[str] = []
    known = False
    for g in nv.gpus:
        fields = (
            g.ecc_enabled,
            g.ecc_volatile_uncorrected,
            g.retired_pages_dbe,
            g.remapped_rows_uncorrectable,
        )
        if any(f is not None for f in fields):
            known = True
        if g.ecc_volatile_uncorrected:
            fails.append(f"GPU {g.index}: {g.ecc_volatile_uncorrected} uncorrectable ECC error(s) since boot")
        if g.retired_pages_pending:
            fails.append(f"GPU {g.index}: page retirement pending (needs a GPU reset)")
        if g.remapped_rows_failure:
            fails.append(f"GPU {g.index}: row remapping failed")
        if g.remapped_rows_pending:
            fails.append(f"GPU {g.index}: row remapping pending (needs a GPU reset)")
        if g.ecc_aggregate_uncorrected:
            warns.append(f"GPU {g.index}: {g.ecc_aggregate_uncorrected} uncorrectable ECC error(s) in its lifetime")
        if g.retired_pages_dbe or g.retired_pages_sbe:
            warns.append(f"GPU {g.index}: {(g.retired_pages_dbe or 0) + (g.retired_pages_sbe or 0)} retired page(s)")
        if g.remapped_rows_uncorrectable:
            warns.append(f"GPU {g.index}: {g.remapped_rows_uncorrectable} row(s) remapped after uncorrectable errors")
        if g.ecc_enabled is not None and g.ecc_pending is not None and g.ecc_pending != g.ecc_enabled:
            now, then = ("on", "off") if g.ecc_enabled else ("off", "on")
            warns.append(f"GPU {g.index}: ECC is {now} but turns {then} at the next reboot (memory size changes)")
    if fails:
        return Check(
            "ecc",
            "fail",
            "; ".join(fails + warns) + ".",
            "Drain the GPU, reset it (sudo nvidia-smi -r -i <index>) or reboot; if errors recur, the board needs "
            "service (check `nvidia-smi -q -d ECC,PAGE_RETIREMENT,ROW_REMAPPER` and dmesg for Xid 48/63/64/94/95).",
        )
    if warns:
        return Check("ecc", "warn", "; ".join(warns) + ".", "Watch for new errors; plan to have the board checked.")
    if not known:
        return Check("ecc", "skip", "NVML does not report ECC on these GPUs (GeForce and vGPU boards do not).")
    off = [g.index for g in nv.gpus if g.ecc_enabled is False]
    note = f" ECC is off on GPU(s) {', '.join(map(str, off))}." if off else ""
    return Check("ecc", "ok", "No uncorrectable ECC errors, retired pages or failed row remaps." + note)
