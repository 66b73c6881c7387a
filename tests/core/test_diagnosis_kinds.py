"""Issue 12's kinds, told apart by evidence: new wordings, Gloo's interface syntax, "unhandled system error" in a
container (also garbled), stalls read from the log's own clock, error 803 behind a compat library, whose memory an
OOM names. The real logs are in tests/fixtures/doctor-cases (checked by test_diagnosis.py); here the evidence that
tells one cause from the other is varied."""

from __future__ import annotations

from pathlib import Path

from qwendeploy.core.diagnosis.engine import DiagnosisContext, diagnose
from qwendeploy.core.diagnosis.evidence import MachineProcess, duration, timestamp

CASES = Path(__file__).parent.parent / "fixtures" / "doctor-cases"
ERR_803 = (
    "RuntimeError: Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions before calling "
    "NumCudaDevices() that might have already set an error? Error 803: system has unsupported display driver / cuda "
    "driver combination"
)


def _case(name: str) -> list[str]:
    return (CASES / name).read_text().partition("\n---\n")[2].splitlines()


def test_803_is_told_apart_by_the_host_driver() -> None:
    new = diagnose([ERR_803], DiagnosisContext(driver_version="580.65.06"))[0]
    old = diagnose([ERR_803], DiagnosisContext(driver_version="535.183.01"))[0]
    unsure = diagnose([ERR_803])[0]
    assert {new.category, old.category, unsure.category} == {"driver_cuda_mismatch"}
    assert new.rule_id == "cuda-compat-shadows-driver" and "580.65.06" in new.summary
    assert "Do not upgrade the driver" in new.fix and any(e.line == 0 for e in new.evidence)
    assert old.rule_id == "driver-too-old" and "Upgrade the host driver" in old.fix
    assert unsure.rule_id == "driver-803-undetermined" and "nvidia-smi" in unsure.fix
    # nvidia-smi's header in the log is evidence too.
    smi = "| NVIDIA-SMI 580.82.07              Driver Version: 580.82.07      CUDA Version: 13.0     |"
    assert diagnose([smi, ERR_803])[0].rule_id == "cuda-compat-shadows-driver"
    assert diagnose([smi.replace("580.82.07", "550.54.15"), ERR_803])[0].rule_id == "driver-too-old"


def test_unhandled_system_error_survives_copy_paste_and_names_the_container() -> None:
    base = "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error"
    for line in (base, base.replace(": ", "："), "NCCLerror：unhandled  system error (run withNCCL DEBUG=INFo)"):
        assert diagnose([line])[0].category == "shm_too_small", line
    bridge = "ae05277d311f:55933:55933 [1] NCCL INFO Bootstrap : Using eth0:172.17.0.3<0>"
    plain, boxed = diagnose([base])[0], diagnose([bridge, base])[0]
    assert boxed.confidence > plain.confidence
    assert "container" in boxed.summary and "172.17.0.3" in boxed.summary
    assert "df -h /dev/shm" in plain.fix and "NCCL_DEBUG=INFO" in plain.fix


def test_ibverbs_failure_is_not_called_shm() -> None:
    lines = [
        "kilo:318:3584 [5] misc/ibvwrap.cc:183 NCCL WARN Call to ibv_reg_dmabuf_mr failed with error Cannot allocate "
        "memory",
        "cupy_backends.cuda.libs.nccl.NcclError: NCCL_ERROR_SYSTEM_ERROR: unhandled system error (run with "
        "NCCL_DEBUG=INFO for details)",
    ]
    assert diagnose(lines)[0].category == "infiniband_failure"


def test_gloo_interface_kinds() -> None:
    excl = diagnose(["RuntimeError: [enforce fail at device.cc:84] ifa != nullptr. Unable to find address for: ^lo"])
    named = diagnose(["RuntimeError: [enforce fail at device.cc:84] ifa != nullptr. Unable to find address for: eth0"])
    assert excl[0].rule_id == "gloo-ifname-exclusion-syntax" and "^lo" in excl[0].summary
    assert named[0].rule_id == "gloo-ifname-unknown" and "eth0" in named[0].summary
    assert {excl[0].category, named[0].category} == {"multinode_wrong_interface"}


def test_world_size_asserts_in_other_wordings() -> None:
    old = "RuntimeError: please ensure that world_size (2) is less than than max local gpu count (1)"
    d = diagnose([old])[0]
    assert d.category == "cuda_visible_devices_mismatch" and "2 GPUs" in d.summary and "only 1" in d.summary


def test_a_stall_says_where_for_how_long_and_what_to_check() -> None:
    d = diagnose(_case("startup_stalled_after_capture.log"), DiagnosisContext(log_age_s=7325))[0]
    assert d.rule_id == "startup-stalled" and d.confidence <= 0.5
    assert "stopped making progress at CUDA-graph capture for 30 s" in d.summary
    assert "nothing was written for 2 h 2 min" in d.summary
    assert "--disable-custom-all-reduce" in d.fix
    loading = [
        "INFO 11-11 14:17:05 api_server.py:585] vLLM API server version 0.6.3.post1",
        "INFO 11-11 14:17:09 model_runner.py:1056] Starting to load model Qwen/Qwen2.5-72B-Instruct...",
        "INFO 11-11 14:29:40 weight_utils.py:243] Using model weights format ['*.safetensors']",
    ]
    d = diagnose(loading)[0]
    assert "loading weights for 12 min 31 s" in d.summary and "iostat" in d.fix
    no_clock = diagnose(["vLLM API server version 0.6.3", "Starting to load model x"])[0]
    assert "no timestamps" in no_clock.summary


def test_a_hang_rule_still_ranks_above_the_bare_stall() -> None:
    found = diagnose(_case("nccl_p2p_hang_pynccl_init.log"))
    assert [d.category for d in found][:2] == ["nccl_p2p_hang", "unknown"]
    assert found[0].confidence > found[1].confidence


def test_timestamps_of_the_usual_formats() -> None:
    a, b = timestamp("INFO 08-31 09:50:46 utils.py:975] x"), timestamp("W0831 09:51:46.603780 run.py:757]")
    assert a is not None and b is not None and b[0] - a[0] == 60
    c = timestamp("[2025-06-16 17:17:39] kilo:318:3584 [5] NCCL WARN")
    assert c is not None and c[1] == "2025-06-16 17:17:39"
    assert duration(59) == "59 s" and duration(3600 * 26) == "1 d 2 h"


OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.71 GiB. GPU 0 has a total capacity of 22.30 GiB "
    "of which 1.52 GiB is free. Process {pid} has 20.28 GiB memory in use. Of the allocated memory {alloc} GiB is "
    "allocated by PyTorch, and 244.94 MiB is reserved by PyTorch but unallocated."
)


def test_whose_memory_this_process_an_orphan_of_an_earlier_run_or_a_stranger() -> None:
    own = diagnose([OOM.format(pid=9, alloc="19.55")])[0]
    assert "pid 9 (20.28 GiB) is this vLLM process itself" in own.summary
    stranger = diagnose([OOM.format(pid=9, alloc="1.00")])[0]
    assert "appear nowhere else" in stranger.summary and "ps -o pid,ppid" in stranger.summary
    earlier_run = [
        "INFO 11-11 14:17:05 api_server.py:585] vLLM API server version 0.6.3.post1",
        "(VllmWorkerProcess pid=4242) INFO 11-11 14:17:09 model_runner.py:1056] Starting to load model Qwen/x...",
        "INFO 11-11 14:40:00 api_server.py:585] vLLM API server version 0.6.3.post1",
        "INFO 11-11 14:40:09 model_runner.py:1056] Starting to load model Qwen/x...",
        OOM.format(pid=4242, alloc="1.00"),
    ]
    d = diagnose(earlier_run)[0]
    assert d.category == "orphaned_gpu_process" and "4242" in d.fix and "kill -TERM 4242" in d.fix
    machine = (MachineProcess(pid=77, name="VLLM::Worker_TP1", orphan=True, vllm=True),)
    d = diagnose([OOM.format(pid=77, alloc="1.00")], DiagnosisContext(gpu_processes=machine))[0]
    assert d.category == "orphaned_gpu_process" and "VLLM::Worker_TP1" in d.summary
    other = (MachineProcess(pid=78, name="python train.py", orphan=False),)
    d = diagnose([OOM.format(pid=78, alloc="1.00")], DiagnosisContext(gpu_processes=other))[0]
    assert d.category != "orphaned_gpu_process" and "another job on this machine (python train.py)" in d.summary


def test_doctors_own_nccl_test_hang_is_a_catalog_rule() -> None:
    ctx = DiagnosisContext(nccl_test=("timed out after 120 s.", "p2p: P2P between GPU 0 and 1 fails", ("x", "y")))
    d = diagnose([], ctx)
    assert [x.rule_id for x in d] == ["nccl-test-hang"]
    assert d[0].category == "nccl_p2p_hang" and "P2P between GPU 0 and 1 fails" in d[0].summary
    assert d[0].evidence[-1].text == "doctor --nccl-test: y"


def test_messages_wrapped_or_quoted_by_copy_paste_still_match() -> None:
    wrapped = [
        "(EngineCore_DP0 pid=570282) AssertionError: local_world_size (16) must be less than or equal to the",
        "number of visible devices (8).",
    ]
    d = diagnose(wrapped)[0]
    assert d.rule_id == "local-world-size-exceeds-visible" and "16 GPUs" in d.summary and "only 8" in d.summary
    assert d.evidence[-1].line == 2 and "visible devices (8)" in d.evidence[-1].text
    shm = [
        "DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system",
        "error (run with NCCL_DEBUG)",
    ]
    assert diagnose(shm)[0].category == "shm_too_small"
    quoted = ["> > RuntimeError: [enforce fail at device.cc:84] ifa != nullptr. Unable to find address for: ^lo"]
    assert diagnose(quoted)[0].rule_id == "gloo-ifname-exclusion-syntax"


def test_the_catch_all_stays_honest() -> None:
    d = diagnose(["INFO 11-11 14:17:05 api_server.py:585] vLLM API server version 0.6.3", "ZeroDivisionError: boom"])
    assert [x.rule_id for x in d] == ["unknown-error"] and not d[0].recognised
    assert d[0].evidence[-1].text == "ZeroDivisionError: boom"


def test_a_bare_worker_excerpt_that_stops_in_distributed_init_is_a_hang_not_nothing() -> None:
    # HAMi-core issue 261 (vLLM 0.25, TP 2 under a GPU-sharing layer): the excerpt never says "vllm".
    hami = [
        "(Worker pid=958) INFO 08-09 21:13:57 [distributed/parallel_state.py:1607] world_size=2 rank=1 local_rank=1 "
        "distributed_init_method=tcp://127.0.0.1:43615 backend=nccl",
        "(Worker pid=958) DEBUG 08-09 21:13:57 [distributed/parallel_state.py:1689] Detected 1 nodes in the "
        "distributed environment",
    ]
    found = diagnose(hami)
    assert [d.category for d in found] == ["nccl_p2p_hang", "unknown"]
    assert "the start (no start-up phase logged yet)" in found[0].summary


def test_a_log_still_being_written_is_said_to_be_maybe_running() -> None:
    d = diagnose(_case("startup_stalled_after_capture.log"), DiagnosisContext(log_age_s=20))[0]
    assert "written 20 s ago: the start-up may still be running" in d.summary


def test_a_hang_may_end_in_a_little_chatter_after_nccl_set_up() -> None:
    log = [
        "INFO 08-31 09:50:46 parallel_state.py:845] world_size=2 rank=0 local_rank=0 backend=nccl",
        "INFO 08-31 09:50:46 pynccl.py:63] vLLM is using nccl==2.20.5",
        "osprey1:1927386:1927386 [1] NCCL INFO comm 0x55 rank 1 nranks 2 cudaDev 1 - Init COMPLETE",
        "(VllmWorkerProcess pid=1927518) INFO 08-31 09:50:47 multiproc_worker_utils.py:215] Worker ready; awaiting "
        "tasks",
    ]
    assert diagnose(log)[0].category == "nccl_p2p_hang"
    # Far from NCCL set-up (weights loading for minutes), a silent stop is a stall at that phase, not a P2P hang.
    far = [
        *log,
        "INFO 08-31 09:51:00 model_runner.py:1056] Starting to load model Qwen/Qwen2.5-72B-Instruct...",
        *[
            f"INFO 08-31 09:5{i}:00 weight_utils.py:243] Using model weights format ['*.safetensors']"
            for i in range(2, 8)
        ],
    ]
    assert diagnose(far)[0].rule_id == "startup-stalled" and "loading weights" in diagnose(far)[0].summary
