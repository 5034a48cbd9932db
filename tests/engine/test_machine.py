"""The CPU name that keys stored timings."""

from __future__ import annotations

from pathlib import Path

from litestage_chain.engine import machine


def test_the_cpu_name_is_the_model_name_line_of_cpuinfo(monkeypatch, tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD   EPYC 9R14\nflags\t: avx2\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(info if str(self) == "/proc/cpuinfo" else self,
                                                                       *a, **k))
    machine.cpu_name.cache_clear()
    try:
        assert machine.cpu_name() == "AMD EPYC 9R14"
    finally:
        machine.cpu_name.cache_clear()


def test_without_cpuinfo_the_name_falls_back_to_the_platform(monkeypatch) -> None:
    def missing(self: Path, *args: object, **kwargs: object) -> str:
        raise OSError("no such file")

    monkeypatch.setattr(Path, "read_text", missing)
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "arm64")
    machine.cpu_name.cache_clear()
    try:
        assert machine.cpu_name() == "arm64"
    finally:
        machine.cpu_name.cache_clear()
