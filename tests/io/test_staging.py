"""Staging directories of killed writers are cleaned up by the next run, and nothing else is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from q35f.io import staging


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_our_leftovers_of_dead_writers_are_removed(tmp_path):
    out = tmp_path / "out"
    dead = staging.create(out)
    (dead / "model.safetensors").write_bytes(b"x" * 100)
    marker = dead.with_name(dead.name + staging.MARKER_SUFFIX)
    owner = json.loads(marker.read_text())
    marker.write_text(json.dumps({**owner, "pid": _dead_pid()}))
    reused = staging.create(out)  # a live pid, but not the process that wrote this marker
    reused_marker = reused.with_name(reused.name + staging.MARKER_SUFFIX)
    reused_marker.write_text(json.dumps({**owner, "started": "0"}))
    live = staging.create(out)  # this process: still writing
    foreign = tmp_path / ".out.partial-deadbeef"  # no marker: not provably ours
    foreign.mkdir()
    other_host = staging.create(out)
    other_marker = other_host.with_name(other_host.name + staging.MARKER_SUFFIX)
    other_marker.write_text(json.dumps({**owner, "host": "elsewhere", "pid": _dead_pid()}))
    other_out = staging.create(tmp_path / "other")
    other_out.with_name(other_out.name + staging.MARKER_SUFFIX).write_text(
        json.dumps({**owner, "pid": _dead_pid()}))
    lines = []
    removed = staging.remove_stale(out, lines.append)
    assert sorted(removed) == sorted([dead, reused])
    assert not dead.exists() and not marker.exists() and not reused_marker.exists()
    assert live.is_dir() and foreign.is_dir() and other_host.is_dir() and other_out.is_dir()
    assert len(lines) == 2 and all("killed" in line for line in lines)


def test_a_killed_quantize_leaves_nothing_after_the_next_run(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "q35f", "quantize", "-o", str(out), "--round-to-nearest",
               "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and not list(tmp_path.glob(".out.partial-*/model.safetensors")):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(p.is_dir() for p in tmp_path.glob(".out.partial-*")), "the run ended first"
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stderr and "killed" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
