"""What a benchmark table names about the machine: the CPU model and the instruction-set flags timings depend on."""

from __future__ import annotations

from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile")


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return [f for f in FLAGS if f" {f}" in text]


def cpu_description() -> str:
    """``Intel(R) Xeon(R) Processor (avx2 avx512f avx512_vnni amx_tile)``."""
    from prunecli.runtime.timing import cpu_model

    return f"{cpu_model()} ({' '.join(cpu_flags()) or 'no AVX2'})"
