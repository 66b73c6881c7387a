"""`qwendeploy doctor` through Typer's runner; NVML comes from the fake backend via cli/wiring.py's seam."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes.fake_nvml import FakeNvml
from typer.testing import CliRunner

from qwendeploy.adapters.profile_files import write_profile
from qwendeploy.cli import app, wiring
from qwendeploy.core.profile import ModelSection, PlacementSection, Profile

MACHINES = Path(__file__).parent.parent / "fixtures" / "machines"
CORPUS = Path(__file__).parent.parent / "fixtures" / "doctor-corpus"
runner = CliRunner()


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Use a fake machine: ``machine("2xa100-orphan.yaml")``."""

    def use(name: str) -> FakeNvml:
        fake = FakeNvml.load(MACHINES / name)
        monkeypatch.setattr(wiring, "BACKEND_FACTORY", lambda: fake)
        monkeypatch.setattr(wiring, "PROCESS_LOOKUP", fake.process_lookup)
        return fake

    return use


def doctor_json(*args: str, input: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = runner.invoke(app, ["doctor", *args, "--json"], input=input)
    return result.exit_code, json.loads(result.stdout)


def test_no_gpu_here_runs_and_says_so(machine) -> None:  # type: ignore[no-untyped-def]
    machine("no-driver.yaml")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "libnvidia-ml.so.1" in result.output and "nvml" in result.output


def test_json_shape(machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    machine("1xh100.yaml")
    code, d = doctor_json("--shm-path", str(tmp_path))
    assert set(d) == {"checks", "diagnoses"} and d["diagnoses"] == []
    for c in d["checks"]:
        assert set(c) == {"name", "status", "detail", "fix"} and c["status"] in ("ok", "warn", "fail", "skip")
    names = [c["name"] for c in d["checks"]]
    assert names[:3] == ["nvml", "driver", "gpu[0].memory"] and "shm" in names
    assert code == (1 if any(c["status"] == "fail" for c in d["checks"]) else 0)


def test_orphan_machine_exits_1_with_kill(machine) -> None:  # type: ignore[no-untyped-def]
    machine("2xa100-orphan.yaml")
    code, d = doctor_json()
    assert code == 1
    (proc,) = [c for c in d["checks"] if c["name"] == "gpu_processes"]
    assert proc["status"] == "fail" and "kill 4242 4243" in proc["fix"]


def test_rich_report_has_gpus_and_topology(machine) -> None:  # type: ignore[no-untyped-def]
    machine("8xh100-nvlink.yaml")
    result = runner.invoke(app, ["doctor"])
    assert "NVIDIA H100 80GB HBM3" in result.output
    assert "NV18" in result.output and "GPU7" in result.output


def test_missing_log_is_bad_input(machine) -> None:  # type: ignore[no-untyped-def]
    machine("no-driver.yaml")
    result = runner.invoke(app, ["doctor", "--log", "/nonexistent/vllm.log"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_bad_profile_is_bad_input(machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    machine("no-driver.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nmodel: {id: x}\nplacement: {tensor_paralel_size: 2}\n")
    result = runner.invoke(app, ["doctor", "--profile", str(bad)])
    assert result.exit_code == 2 and "tensor_parallel_size" in result.output


def test_profile_checks_on_fake_machine(machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    machine("4xrtx4090d-pcie.yaml")
    path = write_profile(
        tmp_path / "p.yaml",
        Profile(model=ModelSection(id="Qwen/Qwen2.5-7B-Instruct"), placement=PlacementSection(tensor_parallel_size=8)),
    )
    code, d = doctor_json("--profile", str(path))
    checks = {c["name"]: c for c in d["checks"]}
    assert code == 1
    assert checks["profile.tp_heads"]["status"] == "fail" and checks["profile.gpus"]["status"] == "fail"


def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.log"))


def test_the_cli_walks_the_one_corpus_copy() -> None:
    """One copy of the shared corpus under tests/fixtures (the one tests/core/test_diagnosis.py reads), not two."""
    fixtures = Path(__file__).parent.parent / "fixtures"
    assert len(_corpus()) >= 20
    assert not (fixtures / "doctor_logs").exists()


def _body_and_category(path: Path) -> tuple[str, str]:
    text = path.read_text()
    header, _, body = text.partition("\n---\n")
    category = next(line.split(":", 1)[1].strip() for line in header.splitlines() if line.startswith("# category:"))
    return body, category


@pytest.mark.parametrize("log", _corpus(), ids=lambda p: p.name)
def test_log_from_stdin_first_diagnosis(machine, log: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("qwendeploy.core.diagnosis.engine")
    machine("no-driver.yaml")
    body, category = _body_and_category(log)
    code, d = doctor_json("--log", "-", input=body)
    assert d["diagnoses"] and d["diagnoses"][0]["category"] == category
    first = d["diagnoses"][0]
    assert {"category", "summary", "evidence", "fix", "confidence"} <= set(first)
    assert code == 1


def test_log_file_argument(machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("qwendeploy.core.diagnosis.engine")
    machine("no-driver.yaml")
    body, category = _body_and_category(CORPUS / "01-shm_too_small.log")
    f = tmp_path / "vllm.log"
    f.write_text(body)
    result = runner.invoke(app, ["doctor", "--log", str(f)])
    assert result.exit_code == 1 and category in result.output and "Fix:" in result.output


def test_log_that_is_a_directory_is_bad_input_saying_so(machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    machine("no-driver.yaml")
    result = runner.invoke(app, ["doctor", "--log", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output and "does not exist" not in result.output
    missing = runner.invoke(app, ["doctor", "--log", str(tmp_path / "nope.log")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_empty_log_says_it_is_empty(machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    machine("no-driver.yaml")
    code, d = doctor_json("--log", "-", input="\n  \n")
    (log,) = [c for c in d["checks"] if c["name"] == "log"]
    assert log["status"] == "warn" and "The log is empty (stdin" in log["detail"] and d["diagnoses"] == []
    assert code == 0  # nothing failed: an empty journal must not block an ExecStartPre gate
    f = tmp_path / "vllm.log"
    f.write_text("")
    result = runner.invoke(app, ["doctor", "--log", str(f)])
    assert result.exit_code == 0 and "The log is empty" in result.output


def test_nccl_test_single_gpu_runs_nothing(machine) -> None:  # type: ignore[no-untyped-def]
    machine("1xh100.yaml")
    code, d = doctor_json("--nccl-test")
    (c,) = [c for c in d["checks"] if c["name"] == "nccl_test"]
    assert c["status"] == "skip" and "at least 2 GPUs" in c["detail"]
    assert code == 0


def test_nccl_test_without_torch(machine) -> None:  # type: ignore[no-untyped-def]
    from qwendeploy.adapters import nccl_test

    if nccl_test.torch_available():
        pytest.skip("torch is installed here")
    machine("8xh100-nvlink.yaml")
    _, d = doctor_json("--nccl-test")
    (c,) = [c for c in d["checks"] if c["name"] == "nccl_test"]
    assert c["status"] == "skip" and "pip install torch" in c["fix"]


def test_dump_facts_becomes_a_fixture(machine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    machine("2xa100-orphan.yaml")
    result = runner.invoke(app, ["doctor", "--dump-facts"])
    assert result.exit_code == 0
    dumped = json.loads(result.stdout)
    fake = FakeNvml.from_report_dict(dumped["nvml"])
    from qwendeploy.adapters import nvml

    again = nvml.probe(fake, processes=fake.process_lookup)
    assert again.to_dict() == dumped["nvml"]
    assert [p.orphan for g in again.gpus for p in g.processes] == [True, True]


def test_a_named_cause_of_category_unknown_exits_1_the_catch_all_does_not(machine) -> None:  # type: ignore[no-untyped-def]
    """The real H100 log of a killed engine core is diagnosed (rule engine-core-died, category unknown): exit 1 and
    "recognised"; an error no rule knows is quoted by the catch-all and does not gate a service."""
    machine("no-driver.yaml")
    crash = Path(__file__).parent.parent / "fixtures" / "gpu-runs" / "h100-vllm0.26" / "h100_q7_32k" / "vllm.log"
    code, d = doctor_json("--log", "-", input=crash.read_text())
    assert [(x["rule_id"], x["recognised"]) for x in d["diagnoses"]] == [("engine-core-died", True)]
    assert code == 1
    result = runner.invoke(app, ["doctor", "--log", str(crash)])
    assert result.exit_code == 1 and "most likely: engine-core-died" in " ".join(result.output.split())
    code, d = doctor_json("--log", "-", input="ERROR something nobody has seen before\n")
    assert [(x["rule_id"], x["recognised"]) for x in d["diagnoses"]] == [("unknown-error", False)]
    assert code == 0


def test_log_that_never_ends_is_refused_and_a_pipe_without_writer_reads_empty(tmp_path: Path) -> None:
    """A device (/dev/zero) would be read forever: exit 2 with one message. A FIFO nobody writes to must not hang
    the open or the read: it is an empty log (a warning), while a pipe with a writer is read to its end."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "qwendeploy", "doctor", "--log"]
    env = dict(os.environ)
    zero = subprocess.run([*cmd, "/dev/zero"], capture_output=True, text=True, timeout=60, env=env)
    assert zero.returncode == 2 and "never end" in zero.stderr and "Traceback" not in zero.stderr
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    empty = subprocess.run([*cmd, str(fifo)], capture_output=True, text=True, timeout=60, env=env)
    assert "The log is empty" in empty.stdout and "Traceback" not in empty.stderr
    writer = subprocess.Popen(
        ["sh", "-c", f"cat > {fifo}"], stdin=subprocess.PIPE, text=True
    )  # holds the write end until stdin closes
    reader = subprocess.Popen([*cmd, str(fifo), "--json"], stdout=subprocess.PIPE, text=True, env=env)
    assert writer.stdin is not None
    writer.stdin.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n")
    writer.stdin.close()
    out, _ = reader.communicate(timeout=60)
    writer.wait(timeout=10)
    assert json.loads(out)["diagnoses"], out
