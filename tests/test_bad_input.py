"""Bad input of every kind — flags, config files, stores, checkpoints, SAE folders — gets
one line that names the problem and the fix, exit code 2, and no traceback; corrupt
bytes and non-finite values are caught before they reach a weight."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit
from saekit._runtime.checksums import sha256_file
from saekit.app.cli import main
from saekit.data.store import StoreWriter

D_IN = 8


def make_store(path: Path, rows: int = 96, shards: int = 2) -> Path:
    header = {
        "model": "toy",
        "model_fingerprint": "toy",
        "hook": "layers.0.resid_post",
        "dtype": "float32",
        "d_in": D_IN,
        "context_size": 4,
        "corpus_fingerprint": "toy",
        "n_tokens": rows,
        "shard_contexts": 1,
        "n_shards": shards,
    }
    writer = StoreWriter(path, header)
    x = torch.randn(rows, D_IN, generator=torch.Generator().manual_seed(0))
    per = rows // shards
    for index in range(shards):
        meta = np.zeros((per, 3), dtype=np.int32)
        writer.write_shard(index, x[index * per : (index + 1) * per], meta, (index, index + 1))
    writer.finish()
    return path


def rewrite_checksums(store: Path) -> None:
    """What someone editing a store by hand would do to make it look intact."""
    manifest = json.loads((store / "manifest.json").read_text())
    for shard in manifest["shards"]:
        for kind in ("act", "tok"):
            shard["sha256"][kind] = sha256_file(store / f"{shard['name']}.{kind}")
    (store / "manifest.json").write_text(json.dumps(manifest))


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("bad") / "store")


TRAIN = ["train", "--steps", "3", "--batch-size", "32", "--normalization-tokens", "64", "--progress", "false"]

# ---- command-line flags ----------------------------------------------------------------------
FLAG_CASES = {
    "negative lr": (["--lr", "-1e-3"], ["--lr", "must be a number > 0", "'-1e-3'", "for example --lr auto"]),
    "lr not a number": (["--lr", "fast"], ["--lr", "must be a number > 0", "'fast'"]),
    "unknown device": (["--device", "tpu9"], ["--device", "cpu, cuda, cuda:N or mps", "'tpu9'"]),
    "one adam beta": (["--adam-betas", "0.9"], ["--adam-betas", "2 values separated by a comma", "0.9,0.99"]),
    "adam beta out of range": (["--adam-betas", "0.9,1.5"], ["--adam-betas", "in [0, 1)"]),
    "zero steps": (["--steps", "0"], ["--steps", "an integer >= 1"]),
    "fractional steps": (["--steps", "1.5"], ["--steps", "an integer"]),
    "batch size text": (["--batch-size", "lots"], ["--batch-size", "'lots'"]),
    "unknown architecture": (["--arch", "relux"], ["relux", "did you mean 'relu'"]),
    "k of zero": (["--k", "0"], ["--k", "an integer >= 1"]),
    "k above d_sae": (["--k", "1000"], ["--k", "d_sae=64"]),
    "bad precision": (["--precision", "fp8"], ["--precision", "'auto', 'float32', 'bfloat16'"]),
    "negative grad clip": (["--grad-clip", "-1"], ["--grad-clip", "> 0"]),
    "not a boolean": (["--fit-scale", "maybe"], ["--fit-scale", "true or false"]),
    "options without a value": (["--options", "aux_k"], ["--options", "key=value"]),
    "unknown SAE option": (["--options", "nonsense=1"], ["unknown SAE option", "nonsense"]),
    "option that does not apply": (["--options", "decoder_norm=weighted"], ["decoder_norm does not apply", "topk"]),
    "option of the wrong type": (["--options", "aux_k=many"], ["aux_k must be an integer"]),
    "cuda on a CPU machine": (["--device", "cuda"], ["no CUDA GPU"]),
    "batch larger than the store": (["--batch-size", "4096"], ["larger than the 96 rows"]),
}


@pytest.mark.parametrize("case", list(FLAG_CASES))
def test_bad_train_flags(tmp_path, capsys, store, case):
    if case == "cuda on a CPU machine" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    flags, fragments = FLAG_CASES[case]
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r", "--expansion", "8", *flags)
    assert_one_line(code, err, *fragments)
    assert not (tmp_path / "r" / "sae").exists()


def test_numbers_in_scientific_notation_are_numbers(tmp_path, capsys, store):
    code, err = run_cli(
        capsys,
        *TRAIN,
        "--activations",
        store,
        "--out",
        tmp_path / "r",
        "--arch",
        "relu",
        "--l1-coefficient",
        "5e-3",
        "--lr",
        "1e-3",
        "--adam-betas",
        "0.9,0.99",
    )
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "sae" / "cfg.json").read_text())["saekit"]["config"]
    assert cfg["provenance"]["lr"] == 1e-3 and math.isclose(cfg["l1_coefficient"], 5e-3, rel_tol=1)


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["run", "--train.lr", "-1"], ["--train.lr", "must be a number > 0"]),
        (["run", "--train.nonsense", "1"], ["unrecognized arguments: --train.nonsense"]),
        (["run", "--sae.options", "aux_k=0"], ["aux_k must be an integer >= 1"]),
        (["run", "--corpus.context_size", "1"], ["--corpus.context_size", ">= 2"]),
        (["harvest", "--hook", "layers.x.resid_post", "--out", "{tmp}/s"], ["--hook", "unknown hook point"]),
        (["harvest", "--tokens", "-5", "--out", "{tmp}/s"], ["--tokens", "an integer >= 1"]),
        (["harvest", "--corpus", "/no/such/texts", "--out", "{tmp}/s"], ["corpus path /no/such/texts does not exist"]),
        (["sweep", "/no/such/run"], ["is not a run folder"]),
        (["sweep", "/no/such/run", "--l0s", "-4"], ["--l0s", "a number"]),
        (["evaluate", "/no/such/run"], ["is not a run folder"]),
        (["compare", "/no/a", "/no/b"], ["is not an SAE folder"]),
        (["convert", "/no/sae", "--out", "{tmp}/x"], ["is not an SAE folder"]),
        (["train", "--activations", "/no/such/store", "--out", "{tmp}/r"], ["not an activation store"]),
    ],
)
def test_bad_flags_of_other_commands(tmp_path, capsys, argv, fragments):
    code, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert_one_line(code, err, *fragments)


def test_out_that_is_a_file(tmp_path, capsys, store):
    (tmp_path / "taken").write_text("a file of mine")
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "taken")
    assert_one_line(code, err, "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "a file of mine"


# ---- config files ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, text, fragments",
    [
        ("bad.toml", "[train\nsteps = 3\n", ["not valid TOML"]),
        ("steps.toml", '[train]\nsteps = "many"\n', ["[train]", "steps must be an integer >= 1, got 'many'"]),
        ("section.toml", "[trian]\nsteps = 3\n", ["unknown field(s) ['trian']", "did you mean 'train'"]),
        ("list.yaml", "- a\n- b\n", ["a table of sections"]),
        ("bad.json", '{"train": ', ["not valid JSON"]),
        ("binary.toml", None, ["not UTF-8"]),
        ("huge.yaml", "#" * (2 << 20), ["a run config is a few kilobytes"]),
    ],
)
def test_bad_config_files(tmp_path, capsys, name, text, fragments):
    path = tmp_path / name
    path.write_bytes(b"\xff\xfe\x00garbage" if text is None else text.encode())
    code, err = run_cli(capsys, "run", path, "--out", tmp_path / "run")
    assert_one_line(code, err, *fragments)
    assert not (tmp_path / "run").exists()


def test_yaml_numbers_in_scientific_notation(tmp_path):
    from saekit.app.config import RunConfig

    (tmp_path / "a.yaml").write_text("train:\n  lr: 1e-3\n  adam_betas: 0.8,0.95\nsae:\n  l1_coefficient: 4e-4\n")
    config = RunConfig.from_file(tmp_path / "a.yaml")
    assert config.train.lr == 1e-3 and config.train.adam_betas == (0.8, 0.95) and config.sae.l1_coefficient == 4e-4


# ---- stores --------------------------------------------------------------------------------------
def test_flipped_byte_in_a_store(tmp_path, capsys):
    store = make_store(tmp_path / "s")
    shard = store / "shard-00001.act"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x40
    shard.write_bytes(bytes(data))
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r")
    assert_one_line(code, err, "shard-00001.act", "sha256")
    assert not (tmp_path / "r").exists()


def test_nan_rows_in_a_store_with_matching_checksums(tmp_path, capsys):
    store = make_store(tmp_path / "s")
    values = np.fromfile(store / "shard-00001.act", dtype="<f4").reshape(-1, D_IN)
    values[5, 3] = np.nan
    values.tofile(store / "shard-00001.act")
    rewrite_checksums(store)
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r")
    assert_one_line(code, err, "NaN", "shard-00001.act row 5", "column 3")
    assert not (tmp_path / "r" / "sae").exists()


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda m: m["shards"][0].update(name="../other/shard-00000"), ["must lie inside the store"]),
        (lambda m: m.update(d_in="big"), ["d_in is 'big'"]),
        (lambda m: m.update(dtype="int8"), ["dtype is 'int8'"]),
        (lambda m: m["shards"][1].update(sha256="none"), ["no sha256 checksums"]),
    ],
)
def test_hostile_manifests(tmp_path, capsys, edit, fragments):
    store = make_store(tmp_path / "s")
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r")
    assert_one_line(code, err, *fragments)


def test_manifest_that_is_not_json(tmp_path, capsys):
    store = make_store(tmp_path / "s")
    (store / "manifest.json").write_text("{oops")
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r")
    assert_one_line(code, err, "manifest.json is not valid JSON")


def test_skipping_verification_is_explicit(tmp_path, capsys):
    store = make_store(tmp_path / "s")
    data = bytearray((store / "shard-00000.tok").read_bytes())
    data[0] ^= 1  # token metadata: training never reads it
    (store / "shard-00000.tok").write_bytes(bytes(data))
    assert run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "a")[0] == 2
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "b", "--no-verify")
    assert code == 0, err


# ---- checkpoints ---------------------------------------------------------------------------------
def trained_then_sae_removed(tmp_path, capsys, store) -> Path:
    """A finished `saekit train` whose sae/ the user deleted: rerunning resumes from the checkpoint."""
    import shutil

    out = tmp_path / "r"
    assert run_cli(capsys, *TRAIN, "--activations", store, "--out", out, "--checkpoint-every", "1")[0] == 0
    shutil.rmtree(out / "sae")
    return out / "train" / "checkpoint"


def test_checkpoint_with_a_nan_weight(tmp_path, capsys, store):
    checkpoint = trained_then_sae_removed(tmp_path, capsys, store)
    weights = checkpoint / "sae" / "sae_weights.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    tensors["W_dec"][3, 2] = float("nan")
    save_file(tensors, str(weights))
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r", "--checkpoint-every", "1")
    assert_one_line(code, err, "sae_weights.safetensors", "sha256", "damaged")
    # with every checksum made to match, the NaN itself is caught
    cfg = json.loads((checkpoint / "sae" / "cfg.json").read_text())
    cfg["saekit"]["checksums"]["sae_weights.safetensors"] = sha256_file(weights)
    (checkpoint / "sae" / "cfg.json").write_text(json.dumps(cfg))
    sums = {
        str(p.relative_to(checkpoint)): sha256_file(p)
        for p in checkpoint.rglob("*")
        if p.is_file() and p.name != "checksums.json"
    }
    (checkpoint / "checksums.json").write_text(json.dumps(sums))
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r", "--checkpoint-every", "1")
    assert_one_line(code, err, "W_dec", "non-finite")
    assert not (tmp_path / "r" / "sae").exists()


def test_checkpoint_with_its_step_edited(tmp_path, capsys, store):
    checkpoint = trained_then_sae_removed(tmp_path, capsys, store)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (checkpoint / "trainer_state.json").write_text(json.dumps({**state, "step": 2}))
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r", "--checkpoint-every", "1")
    assert_one_line(code, err, "trainer_state.json", "sha256")
    sums = json.loads((checkpoint / "checksums.json").read_text())
    sums["trainer_state.json"] = sha256_file(checkpoint / "trainer_state.json")
    (checkpoint / "checksums.json").write_text(json.dumps(sums))
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r", "--checkpoint-every", "1")
    assert_one_line(code, err, "says step 2", "optimiser state has taken [3] steps")


def test_checkpoint_without_checksums(tmp_path, capsys, store):
    checkpoint = trained_then_sae_removed(tmp_path, capsys, store)
    (checkpoint / "checksums.json").unlink()
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r", "--checkpoint-every", "1")
    assert_one_line(code, err, "has no checksums.json")


def test_interrupted_checkpoint_swap_uses_the_last_good_checkpoint(tmp_path, capsys, store):
    checkpoint = trained_then_sae_removed(tmp_path, capsys, store)
    before = saekit.load(checkpoint / "sae").state_for_save()
    # a crash between the swap's two renames: the only copy is the moved-aside old folder
    os.replace(checkpoint, checkpoint.with_name(".checkpoint.old-99999999-0123abcd"))
    code, err = run_cli(capsys, *TRAIN, "--activations", store, "--out", tmp_path / "r", "--checkpoint-every", "1")
    assert code == 0, err
    assert checkpoint.is_dir() and not list(checkpoint.parent.glob(".checkpoint.old-*"))
    resumed = saekit.load(checkpoint / "sae").state_for_save()
    assert all(torch.equal(before[name], resumed[name]) for name in before)  # used, not retrained from scratch


# ---- SAE folders ------------------------------------------------------------------------------------
@pytest.fixture()
def sae_folder(tmp_path) -> Path:
    return saekit.create("relu", d_in=16, d_sae=32, l1_coefficient=1.0).save(tmp_path / "sae")


def edit_cfg(folder: Path, **changes) -> None:
    """Change saekit's own config in cfg.json (its "saekit" block)."""
    raw = json.loads((folder / "cfg.json").read_text())
    raw["saekit"]["config"].update(changes)
    (folder / "cfg.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "damage, fragments",
    [
        (lambda f: edit_cfg(f, d_sae=3_000_000), ["W_dec has shape (32, 16)", "needs (3000000, 16)"]),
        (lambda f: edit_cfg(f, dtype="int8"), ["dtype must be one of"]),
        (lambda f: edit_cfg(f, arch="relux"), ["did you mean 'relu'"]),
        (lambda f: (f / "cfg.json").write_text("{not json"), ["cfg.json is not valid JSON"]),
        (lambda f: (f / "cfg.json").write_text("#" * (2 << 20)), ["a few kilobytes"]),
        (lambda f: (f / "sae_weights.safetensors").write_bytes(b"garbage"), ["not a readable safetensors file"]),
        (
            lambda f: (f / "sae_weights.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}"),
            ["header claims 1,099,511,627,776 bytes"],
        ),
        (
            lambda f: (f / "sae_weights.safetensors").write_bytes((f / "sae_weights.safetensors").read_bytes()[:-10]),
            ["truncated or damaged"],
        ),
        (lambda f: (f / "sae_weights.safetensors").unlink(), ["has no sae_weights.safetensors"]),
    ],
)
def test_damaged_sae_folders(tmp_path, capsys, sae_folder, damage, fragments):
    damage(sae_folder)
    code, err = run_cli(capsys, "convert", sae_folder, "--out", tmp_path / "converted")
    assert_one_line(code, err, *fragments)
    assert not (tmp_path / "converted").exists()


def test_sae_weights_that_do_not_match_their_checksum(tmp_path, capsys, sae_folder):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(sae_folder / "sae_weights.safetensors"))
    tensors["b_dec"] += 1
    save_file(tensors, str(sae_folder / "sae_weights.safetensors"))
    code, err = run_cli(capsys, "convert", sae_folder, "--out", tmp_path / "x")
    assert_one_line(code, err, "does not match the sha256 recorded in cfg.json")
    tensors["b_dec"][0] = float("inf")
    save_file(tensors, str(sae_folder / "sae_weights.safetensors"))
    raw = json.loads((sae_folder / "cfg.json").read_text())
    raw["saekit"]["checksums"]["sae_weights.safetensors"] = sha256_file(sae_folder / "sae_weights.safetensors")
    (sae_folder / "cfg.json").write_text(json.dumps(raw))
    code, err = run_cli(capsys, "convert", sae_folder, "--out", tmp_path / "x")
    assert_one_line(code, err, "b_dec holds 1 non-finite value")


def test_a_hostile_size_allocates_nothing(tmp_path):
    """d_sae = 3,000,000 in cfg.json (with d_in 576: 14 GB of weights) is refused from the
    header alone: the process never grows past what torch itself needs."""
    folder = saekit.create("topk", d_in=576, d_sae=64, k=4).save(tmp_path / "sae")
    edit_cfg(folder, d_sae=3_000_000)
    child = (
        f"import re, saekit\ntry:\n    saekit.load({str(folder)!r})\nexcept saekit.formats.FormatError as e:\n"
        "    print('refused:', e)\n"
        # VmHWM, this process's own peak: ru_maxrss keeps the parent's peak across exec.
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024)"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert "refused:" in done.stdout and "needs (3000000, 576)" in done.stdout, done.stderr
    assert int(done.stdout.split()[-1]) < 1500  # MiB; the weights alone would be 13,000


def test_no_traceback_across_the_process_boundary(tmp_path, store):
    """`python -m saekit` itself: a bad value is one line on stderr and exit code 2."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "saekit",
            "train",
            "--activations",
            str(store),
            "--out",
            str(tmp_path / "r"),
            "--lr",
            "-1e-3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "saekit train: error: argument --lr: must be a number > 0 or one of 'auto', got '-1e-3' "
        "(for example --lr auto) (see saekit train --help)"
    ]


# ---- training that diverges, and bugs ------------------------------------------------------------
def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path):
    from saekit._runtime.errors import NonFiniteError

    x = torch.randn(512, D_IN, generator=torch.Generator().manual_seed(1))
    sae = saekit.create("relu", d_in=D_IN, d_sae=32, l1_coefficient=0.1)
    with torch.no_grad():
        sae.W_enc[0, 0] = float("inf")  # finite data, a weight that is not: step 1's loss is not finite
    with pytest.raises(
        NonFiniteError, match=r"step 1: the loss became non-finite \(reconstruction=.*on a finite batch"
    ):
        saekit.train(sae, x, out=tmp_path / "r", steps=10, batch_size=64, progress=False, checkpoint_every=1)
    assert not (tmp_path / "r" / "checkpoint").exists()  # nothing non-finite was saved


def test_a_bug_is_reported_as_one(monkeypatch, capsys):
    import saekit.app.cli as cli

    def broken(args):
        raise KeyError("something saekit did not expect")

    monkeypatch.setattr(cli, "cmd_config", broken)
    code = cli.main(["config"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "internal error (KeyError" in err and "This is a bug in saekit: please report it" in err
    assert "SAEKIT_DEBUG=1" in err
