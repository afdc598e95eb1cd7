"""`saekit run` interrupted at any stage, by SIGKILL or SIGINT, completes when run again,
without redoing finished stages and without corrupting any output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FLAGS = [
    "--harvest.tokens",
    "4096",
    "--harvest.shard_tokens",
    "1024",
    "--corpus.context_size",
    "64",
    "--sae.expansion",
    "2",
    "--sae.k",
    "8",
    "--train.steps",
    "40",
    "--train.batch_size",
    "256",
    "--train.log_every",
    "2",
    "--train.checkpoint_every",
    "4",
    "--evaluate.tokens",
    "512",
    "--interpret.tokens",
    "1024",
    "--interpret.n_top",
    "4",
]


def default_sigint() -> None:
    """A child started from a shell's background job inherits SIGINT ignored, and Python
    then installs no KeyboardInterrupt handler, so the run would rightly ignore the
    test's Ctrl-C: give the child the default disposition a terminal gives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "saekit", "run", "--out", str(out), *FLAGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=default_sigint,
    )


def read_until(process: subprocess.Popen, predicate, timeout: float = 600) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if predicate(line):
            return lines
        assert time.monotonic() < deadline, "".join(lines[-20:])
    raise AssertionError("the run ended before the expected point:\n" + "".join(lines[-30:]))


def trained_steps(out: Path) -> int:
    state = out / "train" / "checkpoint" / "trainer_state.json"
    return json.loads(state.read_text())["step"] if state.exists() else 0


@pytest.mark.slow
def test_kill_and_interrupt_then_resume(tmp_path):
    out = tmp_path / "run"

    # 1. SIGKILL in the middle of training, once a checkpoint exists.
    first = start(out)
    read_until(first, lambda line: "[saekit] train ..." in line)
    deadline = time.monotonic() + 300
    while trained_steps(out) < 8:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.2)
    first.kill()
    first.wait()
    killed_at = trained_steps(out)
    assert 8 <= killed_at < 40
    assert not (out / "sae").exists()

    # 2. Again; the harvest is not redone, training resumes; Ctrl-C during evaluation.
    second = start(out)
    lines = read_until(second, lambda line: "[saekit] evaluate ..." in line)
    assert any("harvest: done already, skipped" in line for line in lines)
    second.send_signal(signal.SIGINT)
    rest, _ = second.communicate(timeout=120)
    assert second.returncode == 130, rest
    assert "Run the same command again" in rest
    log = [json.loads(line) for line in (out / "train" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(2, 41, 2))  # resumed, no step logged twice
    assert not (out / "metrics.json").exists()

    # 3. Again: finishes, skipping what is done.
    third = start(out)
    output, _ = third.communicate(timeout=900)
    assert third.returncode == 0, output
    for stage in ("harvest", "train"):
        assert f"{stage}: done already, skipped" in output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ce_sae"] > 0 and metrics["l0"] > 0
    assert (out / "report" / "index.html").is_file()
    from saekit import load
    from saekit.data.store import open_store

    open_store(out / "store", verify=True)  # checksums of every shard still hold
    assert load(out / "sae").cfg.provenance["steps"] == 40
