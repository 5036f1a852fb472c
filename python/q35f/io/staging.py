"""Hidden staging directories for outputs that must appear whole or not at all.

A writer builds OUT in `.OUT.partial-XXXXXXXX` next to it and renames it into place at the end.
Beside the staging directory lies `.OUT.partial-XXXXXXXX.writer`, a small JSON file naming the
writing process (host, pid and the kernel's start time of that pid, so a reused pid is not
mistaken for the writer). A run that is killed leaves both behind; the next run for the same
OUT removes such leftovers, but only when the marker proves they are ours and their writer is
gone: same host, and no live process with that pid and start time. Anything else is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path

MARKER_SUFFIX = ".writer"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process `pid` (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return started is None or _start_time(pid) in (None, started)


def _marker(staging: Path) -> Path:
    return staging.with_name(staging.name + MARKER_SUFFIX)


def create(out: Path) -> Path:
    """A fresh staging directory for `out`, with its writer marker."""
    out = Path(out)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    marker = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": _start_time(os.getpid())}
    _marker(staging).write_text(json.dumps(marker))
    staging.mkdir()
    return staging


def discard(staging: Path) -> None:
    """Remove a staging directory (a failed run) and its marker."""
    shutil.rmtree(staging, ignore_errors=True)
    release(staging)


def release(staging: Path) -> None:
    """Remove the marker once the staging directory has been renamed into place (or removed)."""
    try:
        _marker(staging).unlink()
    except FileNotFoundError:
        pass


def remove_stale(out: Path, report=None) -> list[Path]:
    """Remove the staging leftovers of killed writers of `out`; returns what was removed.

    `report(line)` is told about each removal (default: a line on stderr).
    """
    out = Path(out)
    report = report or (lambda line: print(line, file=sys.stderr))
    removed = []
    for marker in sorted(out.parent.glob(f".{out.name}.partial-*{MARKER_SUFFIX}")):
        try:
            owner = json.loads(marker.read_text())
            host, pid, started = owner["host"], int(owner["pid"]), owner.get("started")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a marker we wrote: leave it, and its directory, alone
        if host != socket.gethostname() or _alive(pid, started):
            continue
        staging = marker.with_name(marker.name[: -len(MARKER_SUFFIX)])
        if staging.is_dir() and not staging.is_symlink():
            size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
            shutil.rmtree(staging, ignore_errors=True)
            report(f"removed {staging}: the partial output of a run that was killed "
                   f"(pid {pid}, {size / 2**20:.1f} MiB)")
            removed.append(staging)
        marker.unlink(missing_ok=True)
    return removed
