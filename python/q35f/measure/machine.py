"""Where and when a number was measured: the honesty columns of every CSV row, and RAPL energy.

Power is read only from the kernel's RAPL energy counters (/sys/class/powercap/*/energy_uj).
When they are absent or unreadable the power column stays empty and `power_note()` says why:
a power figure is never estimated.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """'CPU model, N cores, M threads' (cores as the OS reports them, threads = logical CPUs)."""
    import psutil

    cores = psutil.cpu_count(logical=False) or 0
    threads = psutil.cpu_count(logical=True) or os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else threads
    text = f"{cpu_model()}, {cores} cores, {threads} threads"
    if usable != threads:
        text += f" ({usable} usable)"
    return text


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")


def q35f_version() -> str:
    from q35f import __version__

    return __version__


def honesty(model: str, source: str, formula: str = "", note: str = "") -> dict:
    """The columns every CSV row carries after the paper's own."""
    return {
        "model": model,
        "machine": machine_description(),
        "date": today(),
        "q35f_version": q35f_version(),
        "source": source,
        "formula": formula,
        "note": note,
    }


# RAPL


def rapl_domains(root: Path = POWERCAP) -> list[Path]:
    """Top-level package domains (intel-rapl:N, not sub-zones) whose energy counter is readable."""
    found = []
    if not root.is_dir():
        return found
    for zone in sorted(root.glob("*rapl:*")):
        if zone.name.count(":") != 1:
            continue  # sub-zones (core, uncore, dram) are already inside the package counter
        counter = zone / "energy_uj"
        try:
            int(counter.read_text())
        except (OSError, ValueError):
            continue
        found.append(zone)
    return found


def power_note(root: Path = POWERCAP) -> str:
    """Why power is not measured, or '' when RAPL counters are readable."""
    if not root.is_dir():
        return f"power not measured: {root} does not exist (no RAPL interface on this machine/VM)"
    zones = [z for z in sorted(root.glob("*rapl:*")) if z.name.count(":") == 1]
    if not zones:
        return f"power not measured: no RAPL zones under {root}"
    if not rapl_domains(root):
        return f"power not measured: RAPL energy_uj under {root} is not readable (needs root)"
    return ""


class EnergyMeter:
    """Package energy over a `with` block from RAPL counters, in joules; None when unavailable.

    Counters wrap at max_energy_range_uj; one wrap per interval is corrected.
    """

    def __init__(self, root: Path = POWERCAP):
        self.zones = rapl_domains(root)
        self.joules: float | None = None
        self.seconds: float | None = None

    @staticmethod
    def _read(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def __enter__(self):
        import time

        self._start = [self._read(z) for z in self.zones]
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import time

        self.seconds = time.perf_counter() - self._t0
        if not self.zones:
            return False
        total = 0
        for zone, start in zip(self.zones, self._start):
            end = self._read(zone)
            if end < start:
                try:
                    end += int((zone / "max_energy_range_uj").read_text())
                except (OSError, ValueError):
                    return False
            total += end - start
        self.joules = total / 1e6
        return False

    @property
    def watts(self) -> float | None:
        if self.joules is None or not self.seconds:
            return None
        return self.joules / self.seconds
