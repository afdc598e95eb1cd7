"""Foreign SAEs through the whole pipeline, and a run's features out to other tools: an
SAE SAELens trained is evaluated and reported by saekit like a native one; a run exports
to Neuronpedia's layouts and to SAEBench's core-eval schema."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from saekit.app.cli import main

SMALL_RUN = [
    "--model.hook",
    "layers.3.resid_post",
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
    "2048",
    "--interpret.n_top",
    "4",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("formats") / "run"
    assert main(["run", "--out", str(out), *SMALL_RUN]) == 0
    return out


@pytest.mark.slow
def test_neuronpedia_export_of_a_run(run, tmp_path, capsys):
    out = tmp_path / "np"
    assert main(["export", "neuronpedia", str(run), "--out", str(out), "--features", "200"]) == 0
    batches = sorted(out.glob("batch-*.json"))
    assert [b.name for b in batches] == ["batch-0.json", "batch-1.json"]
    batch = json.loads(batches[0].read_text())
    assert (batch["model_id"], batch["layer"], len(batch["features"])) == ("smollm2", 3, 128)
    feature = next(f for f in batch["features"] if f["activations"])
    assert len(feature["pos_str"]) == len(feature["pos_values"]) == 10 and 0 < feature["frac_nonzero"] < 1
    assert len(feature["freq_hist_data_bar_values"]) == len(feature["freq_hist_data_bar_heights"]) == 50
    assert sum(feature["logits_hist_data_bar_heights"]) == 49152  # every token of the vocabulary, binned
    top = feature["activations"][0]
    assert top["bin_min"] == -1 and len(top["tokens"]) == len(top["values"])
    assert top["values"][top["qualifying_token_index"]] == pytest.approx(max(top["values"]), abs=1e-4)
    source = out / "smollm2" / "3-saekit"
    for name in ("release", "model", "sourceset", "source"):
        assert json.loads((source / f"{name}.jsonl").read_text())
    rows = [json.loads(line) for line in gzip.open(source / "features" / "batch-0.jsonl.gz", "rt")]
    assert len(rows) == 128 and rows[0]["layer"] == "3-saekit" and rows[0]["index"] == "0"
    activations = [json.loads(line) for line in gzip.open(source / "activations" / "batch-0.jsonl.gz", "rt")]
    assert all(a["values"][a["maxValueTokenIndex"]] == a["maxValue"] for a in activations)


@pytest.mark.slow
def test_saebench_core_eval_of_a_run(run, tmp_path):
    path = tmp_path / "core.json"
    assert main(["evaluate", str(run), "--saebench", str(path)]) == 0
    result = json.loads(path.read_text())
    metrics = result["eval_result_metrics"]
    assert set(metrics) == {
        "model_behavior_preservation",
        "model_performance_preservation",
        "reconstruction_quality",
        "shrinkage",
        "sparsity",
        "token_stats",
        "misc_metrics",
    }
    assert metrics["sparsity"]["l0"] == pytest.approx(8, abs=0.5)
    assert 0 < metrics["model_performance_preservation"]["ce_loss_score"] <= 1
    assert result["sae_cfg_dict"]["arch"] == "topk"
    assert main(["evaluate", str(run), "--saebench", str(path)]) == 2  # an existing file is never replaced silently


@pytest.mark.slow
def test_an_sae_saelens_trained_is_evaluated_and_reported(tmp_path, capsys):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    cfg = sae_lens.TopKTrainingSAEConfig(
        d_in=576, d_sae=1152, k=16, metadata=SAEMetadata(model_name="smollm2", hook_name="blocks.3.hook_resid_post")
    )
    torch.manual_seed(0)
    theirs = sae_lens.TopKTrainingSAE(cfg)
    theirs.save_inference_model(str(tmp_path / "saelens_sae"))
    out = tmp_path / "run"
    assert (
        main(
            [
                "evaluate",
                "--sae",
                str(tmp_path / "saelens_sae"),
                "--model",
                "smollm2",
                "--tokens",
                "512",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hook"] == "layers.3.resid_post" and metrics["l0"] == pytest.approx(16, abs=0.01)
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "index.html").is_file()
    assert "harvest" not in capsys.readouterr().out  # no store: the SAE came from elsewhere
