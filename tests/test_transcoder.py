"""Transcoders on the embedded model, as a user runs them: a paired store from one
harvest (MLP input and output rows of the same tokens, and the MLP maps one to the
other), then ``saekit run`` with model.hook_out, whose transcoder beats zero and mean
ablation of the MLP's output on held-out text; a skip transcoder at the same k has the
lower FVU."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.app.cli import main
from saekit.data.model import load_model
from saekit.data.pairs import open_pairs

LAYER = 3
HOOK, HOOK_OUT = f"layers.{LAYER}.mlp_in", f"layers.{LAYER}.mlp_out"


@pytest.mark.slow
def test_paired_harvest_holds_mlp_inputs_and_their_outputs(tmp_path):
    out = tmp_path / "pairs"
    argv = ["harvest", "--model", "smollm2", "--hook", HOOK, "--hook-out", HOOK_OUT, "--tokens", "2048"]
    assert (
        main([*argv, "--context-size", "64", "--dtype", "float32", "--model-dtype", "float32", "--out", str(out)]) == 0
    )
    pairs = open_pairs(out)
    assert len(pairs) >= 2048
    x, y = pairs.inputs.activations[0:512].float(), pairs.targets.activations[0:512].float()
    loaded = load_model("smollm2", dtype=torch.float32)
    mlp = loaded.model.model.layers[LAYER].mlp
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), y, rtol=1e-3, atol=1e-3)  # row i of one is row i of the other
    run = tmp_path / "tc"
    train = ["train", "--activations", str(out), "--arch", "topk", "--k", "8", "--transcoder", "skip"]
    assert main([*train, "--steps", "20", "--batch-size", "256", "--out", str(run)]) == 0
    cfg = json.loads((run / "sae" / "cfg.json").read_text())
    assert cfg["saekit"]["config"]["transcoder"] == "skip"
    assert cfg["metadata"]["hook_name"] == f"blocks.{LAYER}.ln2.hook_normalized"
    assert cfg["metadata"]["hook_name_out"] == f"blocks.{LAYER}.hook_mlp_out"


RUN = [
    "--model.hook",
    HOOK,
    "--model.hook_out",
    HOOK_OUT,
    "--harvest.tokens",
    "60000",
    "--corpus.context_size",
    "128",
    "--sae.arch",
    "topk",
    "--sae.k",
    "16",
    "--train.steps",
    "200",
    "--train.batch_size",
    "2048",
    "--evaluate.tokens",
    "4096",
    "--interpret.tokens",
    "2048",
    "--interpret.n_top",
    "4",
]


@pytest.mark.slow
def test_a_transcoder_run_beats_ablating_the_mlp_and_the_skip_term_lowers_fvu(tmp_path):
    metrics = {}
    for kind in ("true", "skip"):
        out = tmp_path / kind
        assert main(["run", "--out", str(out), *RUN, "--sae.transcoder", kind]) == 0
        metrics[kind] = json.loads((out / "metrics.json").read_text())
        sae_cfg = json.loads((out / "sae" / "cfg.json").read_text())
        assert sae_cfg["metadata"]["hook_name_out"] == f"blocks.{LAYER}.hook_mlp_out"
    shown = ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_mean_ablation", "loss_recovered", "kl_div", "fvu", "l0")
    print({kind: {name: round(m[name], 4) for name in shown} for kind, m in metrics.items()})
    for m in metrics.values():
        assert m["ce_sae"] < m["ce_zero_ablation"] and m["ce_sae"] < m["ce_mean_ablation"], m
        assert m["loss_recovered"] > 0.5 and m["loss_recovered_mean_ablation"] > 0.5, m
        assert m["kl_div"] < m["kl_div_zero_ablation"], m
        assert m["l0"] == pytest.approx(16, abs=0.5), m
    assert metrics["skip"]["fvu"] < metrics["true"]["fvu"]
