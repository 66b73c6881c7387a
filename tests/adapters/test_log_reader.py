"""The log reader streams any input in bounded memory: line boundaries as str.splitlines, long lines cut, bytes
decoded with replacement, never an exception (a fuzz suite with a fixed budget)."""

from __future__ import annotations

import io
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwendeploy.adapters import log_reader
from qwendeploy.adapters.log_reader import stream_lines
from qwendeploy.core.diagnosis.engine import diagnose

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_lines_are_splitlines_whatever_the_chunk(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(log_reader, "CHUNK_CHARS", chunk)
    for text in ["a\nb\r\nc\rd", "", "x\n", "\n\n", "a\r\nb\u2028c\x0cd", "é\r\n"]:
        assert list(stream_lines(io.StringIO(text))) == text.splitlines()


def test_a_line_longer_than_the_cap_is_cut_and_the_next_one_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_reader, "CHUNK_CHARS", 7)
    assert list(stream_lines(io.StringIO("y" * 100 + "\nz"), max_chars=10)) == ["y" * 10, "z"]


def test_bytes_split_inside_a_character_stay_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_reader, "CHUNK_CHARS", 1)
    assert list(stream_lines(io.BytesIO("█ version\nä".encode()))) == ["█ version", "ä"]
    assert list(stream_lines(io.BytesIO(b"\xff\xfeab\ncd"))) == ["\ufffd\ufffdab", "cd"]


def test_a_huge_line_without_newline_is_read_in_bounded_memory() -> None:
    class Endless(io.RawIOBase):
        """64 MiB of 'x' without a newline, produced on demand (never held at once)."""

        left = 64 << 20

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(self.left, 1 << 20 if n < 0 else n)
            self.left -= n
            return b"x" * n

    (line,) = list(stream_lines(Endless()))  # type: ignore[arg-type]
    assert len(line) == log_reader.MAX_LINE_CHARS


@FUZZ
@given(st.binary(max_size=20_000), st.integers(min_value=1, max_value=64))
def test_fuzz_bytes_never_raise_and_diagnosis_stays_fast(blob: bytes, chunk: int) -> None:
    saved = log_reader.CHUNK_CHARS
    log_reader.CHUNK_CHARS = chunk
    try:
        start = time.monotonic()
        lines = list(stream_lines(io.BytesIO(blob)))
        assert lines == blob.decode("utf-8", "replace").splitlines()
        diagnose(iter(lines))
        assert time.monotonic() - start < 5.0
    finally:
        log_reader.CHUNK_CHARS = saved


@FUZZ
@given(st.text(max_size=5_000))
def test_fuzz_text_is_split_like_splitlines(text: str) -> None:
    assert list(stream_lines(io.StringIO(text), max_chars=10**9)) == text.splitlines()
