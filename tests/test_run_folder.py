"""A folder saekit writes is a contract: one writer at a time, a rerun resumes only what
the same settings would make, --overwrite deletes only what saekit wrote, and one seed
gives one SAE whichever command made it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_bad_input import TRAIN, make_store

from saekit.app.cli import main
from saekit.app.config import RunConfig
from saekit.app.pipeline import normalize_identity, run_identity
from saekit.sae import registry
from saekit.sae.topk import TopKSAE


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("folder") / "store", rows=512, shards=4)


def train(capsys, store, out, *flags) -> tuple[int, str]:
    code = main([*TRAIN, "--activations", str(store), "--out", str(out), "--k", "4", *map(str, flags)])
    return code, capsys.readouterr().err


def test_the_seed_sets_the_initial_weights(tmp_path, capsys, store):
    assert train(capsys, store, tmp_path / "s1", "--seed", "1")[0] == 0
    assert train(capsys, store, tmp_path / "s1again", "--seed", "1")[0] == 0
    assert train(capsys, store, tmp_path / "s2", "--seed", "2")[0] == 0
    assert same(weights(tmp_path / "s1" / "sae"), weights(tmp_path / "s1again" / "sae"))
    assert not same(weights(tmp_path / "s1" / "sae"), weights(tmp_path / "s2" / "sae"))


def test_a_rerun_with_changed_options_is_refused_with_the_difference(tmp_path, capsys, store):
    out = tmp_path / "r"
    assert train(capsys, store, out)[0] == 0
    before = weights(out / "sae")
    code, err = train(capsys, store, out)  # the same settings: done already
    assert code == 0 and same(before, weights(out / "sae"))
    code, err = train(capsys, store, out, "--k", "8", "--lr", "0.01")
    assert code == 2 and len(err.strip().splitlines()) == 1
    for fragment in ("other settings", "sae.k: 4 -> 8", "another --out", "--overwrite"):
        assert fragment in err, err
    assert re.search(r"train\.lr: [0-9.e-]+ -> 0\.01", err), err  # "auto" as it was resolved
    assert same(before, weights(out / "sae"))  # nothing was touched
    code, err = train(capsys, store, out, "--k", "8", "--lr", "0.01", "--overwrite")
    assert code == 0, err
    assert json.loads((out / "sae" / "cfg.json").read_text())["saekit"]["config"]["k"] == 8


def test_a_finished_sae_is_not_reused_once_saekits_defaults_change(tmp_path, capsys, store, monkeypatch):
    """A folder records the values its "auto" settings resolved to, so a rerun of the same
    command after the architecture's default changed is refused, not answered with the
    SAE trained under the old default."""
    out = tmp_path / "r"
    assert train(capsys, store, out)[0] == 0
    before, written = weights(out / "sae"), (out / "sae" / "sae_weights.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(TopKSAE, "default_encoder_lr_scale", 0.5)
    code, err = train(capsys, store, out)
    assert code == 2 and "train.encoder_lr_scale: 0.7 -> 0.5" in err, err
    assert same(before, weights(out / "sae"))
    monkeypatch.undo()
    assert train(capsys, store, out)[0] == 0  # today's defaults again: done already, not retrained
    assert (out / "sae" / "sae_weights.safetensors").stat().st_mtime_ns == written


def test_a_runs_identity_reads_back_as_written_and_pins_the_resolved_defaults(monkeypatch):
    """pipeline.run_identity records the training settings resolved for the model's width;
    normalize_identity (how a saved identity is re-read) leaves it unchanged, for every
    architecture, including those whose later-added fields sit at their old value."""
    config = RunConfig.from_dict({"train": {"steps": 10}})
    for arch in registry.ARCHITECTURES:
        section = replace(config.sae, arch=arch, k=4, target_l0=None if registry.uses_k(arch) else 4.0)
        run = replace(config, sae=section)
        identity = run_identity(run, 576)
        assert identity["config"]["train"]["lr"] != "auto"
        assert normalize_identity(json.loads(json.dumps(identity))) == identity, arch
    topk = replace(config, sae=replace(config.sae, arch="topk", k=4))
    monkeypatch.setattr(TopKSAE, "default_encoder_lr_scale", 0.5)
    assert run_identity(topk, 576)["config"]["train"]["encoder_lr_scale"] == 0.5
    # an identity saved before the field existed trained at 1, and is re-read so
    saved = run_identity(topk, 576)
    del saved["config"]["train"]["encoder_lr_scale"]
    assert "encoder_lr_scale" not in normalize_identity(saved)["config"]["train"]  # 1: left out


def test_overwrite_deletes_only_what_saekit_wrote(tmp_path, capsys, store):
    out = tmp_path / "r"
    assert train(capsys, store, out)[0] == 0
    (out / "notes.txt").write_text("my notes")
    (out / "sae" / "README.md").write_text("what this SAE is for")
    (out / "train" / "plot.png").write_bytes(b"mine")
    assert train(capsys, store, out, "--k", "2", "--overwrite")[0] == 0
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "sae" / "README.md").read_text() == "what this SAE is for"
    assert (out / "train" / "plot.png").read_bytes() == b"mine"
    assert json.loads((out / "sae" / "cfg.json").read_text())["saekit"]["config"]["k"] == 2


def test_an_sae_folder_saekit_did_not_write_is_never_replaced(tmp_path, capsys, store):
    out = tmp_path / "r"
    (out / "sae").mkdir(parents=True)
    (out / "sae" / "cfg.json").write_text('{"mine": true}')
    for flags in ((), ("--overwrite",)):
        code, err = train(capsys, store, out, *flags)
        assert code == 2 and "saekit did not write it" in err, err
    assert (out / "sae" / "cfg.json").read_text() == '{"mine": true}'


def test_a_run_that_failed_before_writing_does_not_pin_its_folder(tmp_path, capsys, store):
    out = tmp_path / "r"
    if torch.cuda.is_available():
        pytest.skip("needs a machine without a GPU to fail")
    code, err = train(capsys, store, out, "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err
    code, err = train(capsys, store, out, "--k", "2")  # other settings, accepted: nothing was made there
    assert code == 0, err


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, store):
    out = tmp_path / "r"
    command = [sys.executable, "-m", "saekit", *TRAIN, "--activations", str(store), "--out", str(out), "--k", "4"]
    command[command.index("--steps") + 1] = "100000"
    first = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "train" / "train_log.jsonl").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"is in use by another saekit process (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the first run goes on, undisturbed
    finally:
        first.kill()
        first.wait()
    # its lock died with it (kill -9): the same command resumes the folder
    command[command.index("--steps") + 1] = "3"
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "train.steps: 100000 -> 3" in again.stderr  # not resumed with other settings


@pytest.mark.slow
def test_one_seed_one_sae_from_train_run_and_sweep(tmp_path, capsys):
    """The same SAE settings and seed give bit-identical weights through `saekit run`,
    `saekit train` on the run's store, and `saekit sweep`; another seed gives others."""
    small = [
        "--harvest.tokens",
        "4096",
        "--corpus.context_size",
        "64",
        "--sae.expansion",
        "2",
        "--sae.k",
        "8",
        "--train.steps",
        "20",
        "--train.batch_size",
        "256",
        "--train.seed",
        "1",
        "--evaluate.tokens",
        "512",
        "--interpret.tokens",
        "1024",
        "--interpret.n_top",
        "4",
    ]
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), *small]) == 0
    flags = [
        "--activations",
        str(run / "store"),
        "--arch",
        "topk",
        "--expansion",
        "2",
        "--k",
        "8",
        "--steps",
        "20",
        "--batch-size",
        "256",
        "--progress",
        "false",
    ]
    assert main(["train", *flags, "--seed", "1", "--out", str(tmp_path / "t1")]) == 0
    assert main(["train", *flags, "--seed", "2", "--out", str(tmp_path / "t2")]) == 0
    assert main(["sweep", str(run), "--archs", "topk", "--l0s", "8", "--steps", "20"]) == 0
    capsys.readouterr()
    from_run = weights(run / "sae")
    assert same(from_run, weights(tmp_path / "t1" / "sae"))
    assert same(from_run, weights(run / "sweep" / "topk-L0_8" / "sae"))
    assert not same(from_run, weights(tmp_path / "t2" / "sae"))
    # and a rerun of the run with another option is refused, showing it
    assert main(["run", "--out", str(run), *small, "--train.lr", "0.01"]) == 2
    assert re.search(r"train\.lr: [0-9.e-]+ -> 0\.01", capsys.readouterr().err)
