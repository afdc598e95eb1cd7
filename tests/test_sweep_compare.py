"""`saekit sweep` and `saekit compare` on a small real run (SmolLM2, Shakespeare)."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.app.cli import main
from saekit.evaluation.compare import compare

SMALL_RUN = [
    "--harvest.tokens",
    "4096",
    "--corpus.context_size",
    "64",
    "--sae.expansion",
    "2",
    "--sae.k",
    "8",
    "--train.steps",
    "30",
    "--train.batch_size",
    "256",
    "--evaluate.tokens",
    "512",
    "--interpret.tokens",
    "1024",
    "--interpret.n_top",
    "4",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    assert main(["run", "--out", str(out), *SMALL_RUN]) == 0
    return out


@pytest.mark.slow
def test_sweep_writes_table_and_pareto_plots(run, capsys):
    assert main(["sweep", str(run), "--archs", "relu", "topk", "--l0s", "4", "8", "--steps", "20"]) == 0
    rows = json.loads((run / "sweep" / "sweep.json").read_text())
    assert [(row["arch"], row["target"]) for row in rows] == [("relu", 4), ("relu", 8), ("topk", 4), ("topk", 8)]
    for row in rows:
        assert row["ce_sae"] > 0 and 0 < row["l0"] and row["fvu"] is not None
        assert row["relative_reconstruction_bias"] > 0
    assert [row["l0"] for row in rows if row["arch"] == "topk"] == pytest.approx([4, 8], abs=0.5)
    for plot in ("pareto_fvu.png", "pareto_loss_recovered.png"):
        assert (run / "sweep" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| relu | 4 |" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_finds_what_b_lacks(run, tmp_path, capsys):
    import saekit

    a = saekit.load(run / "sae")
    # B: A's dictionary without its first 10 features, plus unrelated random ones.
    b = saekit.create("topk", d_in=a.d_in, d_sae=a.d_sae, k=8, seed=5)
    with torch.no_grad():
        b.W_dec[10:] = a.W_dec[10:] * 3.0  # scale does not matter, direction does
    b.save(tmp_path / "b")
    # A trained for 30 steps is still at its initial directions, which compare leaves out by
    # default (tests/test_compare_labels.py); keep every latent to test the matching itself.
    result = compare(run / "sae", tmp_path / "b", threshold=0.7, untrained_cosine=None)
    assert {row["feature"] for row in result["unmatched"]} == set(range(10))
    assert result["fraction_matched"] == pytest.approx(1 - 10 / a.d_sae)
    assert main(["compare", str(run), str(tmp_path / "b"), "--all-latents", "--json", str(tmp_path / "c.json")]) == 0
    assert "10 features of A without a counterpart" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["unmatched"][0]["feature"] < 10
