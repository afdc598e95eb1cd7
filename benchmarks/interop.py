"""saekit's formats against the peers that cannot live in the test environment, each
installed (scripts/interop-env.sh makes .venv-interop): one row per check, in a table.

- dictionary_learning: every dictionary class trained for a few steps by its own
  trainSAE, loaded by saekit.load; saekit's reconstructions against the dictionary's own.
- SAEBench: a saekit SAE passes SAEBench's load_and_format_sae (its custom-SAE contract)
  unchanged, and ``saekit evaluate --saebench``'s JSON validates as SAEBench's CoreEvalOutput.
- SAEDashboard: ``saekit export neuronpedia``'s batch files build SAEDashboard's
  NeuronpediaDashboardBatch and give back the same JSON (every field, each of the type
  its record declares); with --saedashboard-src (a checkout of SAEDashboard, whose
  neuronpedia_export module is not in its release) the bulk-import rows too.

    bash scripts/interop-env.sh
    .venv-interop/bin/python benchmarks/interop.py [--run RUN] [--saedashboard-src PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402

warnings.filterwarnings("ignore")


def check(rows: list[dict], name: str, test) -> None:
    try:
        detail = test()
        rows.append({"check": name, "result": "pass", "detail": detail or ""})
    except Exception as error:  # noqa: BLE001 - every failure becomes a row of the table
        rows.append({"check": name, "result": "FAIL", "detail": f"{type(error).__name__}: {str(error)[:160]}"})


# ---- dictionary_learning -------------------------------------------------------------------------
def dictionary_learning_rows(rows: list[dict], work: Path) -> None:
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainer, StandardTrainerAprilUpdate
    from dictionary_learning.trainers.top_k import TopKTrainer
    from dictionary_learning.training import trainSAE
    from dictionary_learning.utils import load_dictionary

    import saekit

    d, f, steps = 16, 64, 30
    common = dict(steps=steps, activation_dim=d, dict_size=f, layer=3, lm_name="toy", device="cpu")
    trainers = {
        "AutoEncoder (StandardTrainer)": dict(
            trainer=StandardTrainer, lr=1e-3, l1_penalty=0.1, warmup_steps=5, sparsity_warmup_steps=5, **common
        ),
        "AutoEncoder (April update)": dict(
            trainer=StandardTrainerAprilUpdate,
            lr=1e-3,
            l1_penalty=0.1,
            warmup_steps=5,
            sparsity_warmup_steps=5,
            **common,
        ),
        "GatedAutoEncoder": dict(
            trainer=GatedSAETrainer, lr=1e-3, l1_penalty=0.1, warmup_steps=5, sparsity_warmup_steps=5, **common
        ),
        "AutoEncoderTopK": dict(trainer=TopKTrainer, k=4, warmup_steps=5, threshold_start_step=5, **common),
        "BatchTopKSAE": dict(trainer=BatchTopKTrainer, k=4, warmup_steps=5, threshold_start_step=5, **common),
        "MatryoshkaBatchTopKSAE": dict(
            trainer=MatryoshkaBatchTopKTrainer,
            k=4,
            warmup_steps=5,
            threshold_start_step=5,
            group_fractions=[0.25, 0.75],
            **common,
        ),
        "JumpReluAutoEncoder": dict(trainer=JumpReluTrainer, warmup_steps=5, sparsity_warmup_steps=5, **common),
    }
    torch.manual_seed(0)

    def data():
        while True:
            yield torch.randn(64, d) * 2

    out = work / "dl"
    trainSAE(data(), list(trainers.values()), steps=steps, save_dir=str(out), device="cpu")
    x = torch.randn(256, d, generator=torch.Generator().manual_seed(9)) * 2
    for index, name in enumerate(trainers):
        folder = out / f"trainer_{index}"

        def test(folder=folder):
            theirs, _ = load_dictionary(str(folder), device="cpu")
            ours = saekit.load(folder)
            with torch.no_grad():
                expected = theirs(x)
            error = float((ours(x) - expected).abs().max())
            assert error < 1e-4, f"max |difference| {error:.2e}"
            return f"saekit {ours.cfg.arch}, max |Δ reconstruction| {error:.1e}"

        check(rows, f"dictionary_learning {name} → saekit.load", test)

    def pickle_refused():
        import argparse as module_with_a_class

        bad = work / "pickled"
        bad.mkdir()
        torch.save({"W_enc": torch.zeros(2, 2), "extra": module_with_a_class.Namespace(a=1)}, bad / "ae.pt")
        try:
            saekit.load(bad)
        except saekit.formats.FormatError as error:
            return str(error)[:80]
        raise AssertionError("a pickle of an object was loaded")

    check(rows, "dictionary_learning ae.pt needing more than tensors is refused", pickle_refused)


# ---- SAEBench ----------------------------------------------------------------------------------------
def saebench_rows(rows: list[dict], run: Path | None) -> None:
    import saekit

    def contract():
        from sae_bench.sae_bench_utils.general_utils import load_and_format_sae

        for arch, options in (
            ("topk", {"k": 8}),
            ("gated", {"l1_coefficient": 1.0}),
            ("jumprelu", {"l0_coefficient": 1.0}),
        ):
            sae = saekit.create(arch, d_in=64, d_sae=256, **options)
            sae.cfg.hook, sae.cfg.model = "layers.5.resid_post", "gpt2"
            sae_id, formatted, _ = load_and_format_sae("custom", sae, "cpu")
            assert formatted is sae and formatted.cfg.hook_layer == 5
            assert formatted.cfg.hook_name == "blocks.5.hook_resid_post" and formatted.cfg.architecture_str == arch
            x = torch.randn(4, 7, 64)
            assert formatted.decode(formatted.encode(x)).shape == x.shape
            assert formatted.W_enc.shape == (64, 256) and formatted.b_enc.shape == (256,)
        return "topk, gated, jumprelu: hook_layer 5, blocks.5.hook_resid_post, [B, L, d] in and out"

    check(rows, "SAEBench load_and_format_sae accepts a saekit SAE", contract)

    def schema():
        from sae_bench.evals.core.eval_output import CoreEvalOutput

        path = Path(tempfile.mkdtemp()) / "core.json"
        from saekit.app.cli import main

        assert main(["evaluate", str(run), "--saebench", str(path)]) == 0
        data = json.loads(path.read_text())
        CoreEvalOutput.model_validate(data) if hasattr(CoreEvalOutput, "model_validate") else CoreEvalOutput(**data)
        metrics = data["eval_result_metrics"]
        return (
            f"validates; ce_loss_score {metrics['model_performance_preservation']['ce_loss_score']:.3f}, "
            f"kl_div_score {metrics['model_behavior_preservation']['kl_div_score']:.3f}"
        )

    check(rows, "saekit evaluate --saebench validates as SAEBench CoreEvalOutput", schema)


# ---- SAEDashboard / Neuronpedia -------------------------------------------------------------------------
def neuronpedia_rows(rows: list[dict], run: Path | None, work: Path, source: Path | None) -> None:
    out = work / "neuronpedia"

    def export():
        from saekit.app.cli import main

        assert main(["export", "neuronpedia", str(run), "--out", str(out), "--features", "256"]) == 0
        return f"{len(list(out.glob('batch-*.json')))} batch files"

    check(rows, "saekit export neuronpedia", export)

    def batches():
        from sae_dashboard.neuronpedia.neuronpedia_dashboard import (
            NeuronpediaDashboardActivation,
            NeuronpediaDashboardBatch,
            NeuronpediaDashboardFeature,
        )

        files = sorted(out.glob("batch-*.json"))
        assert files, "no batch files"
        n = 0
        for file in files:
            data = json.loads(file.read_text())
            batch = NeuronpediaDashboardBatch(**data)
            assert batch.to_dict() == data, "the record gives back other JSON"
            for feature in data["features"]:
                _typed(feature, NeuronpediaDashboardFeature, skip={"activations"})
                for activation in feature["activations"]:
                    _typed(
                        activation,
                        NeuronpediaDashboardActivation,
                        optional={"dfa_values", "dfa_maxValue", "dfa_targetIndex"},
                    )
                n += 1
        return f"{n} features: NeuronpediaDashboardBatch(**batch).to_dict() == batch, every field typed"

    check(rows, "Neuronpedia batches build SAEDashboard's records", batches)

    def bulk():
        if source is None:
            raise RuntimeError("skipped: give --saedashboard-src (a checkout of SAEDashboard) to check the bulk rows")
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "neuronpedia_export", source / "sae_dashboard" / "neuronpedia" / "neuronpedia_export.py"
        )
        exporter = importlib.util.module_from_spec(spec)
        sys.modules["neuronpedia_export"] = exporter  # its dataclasses look their module up there
        spec.loader.exec_module(exporter)
        folder = next(out.glob("*/*/features")).parent
        counts = {}
        for kind, cls_name in (("features", "Feature"), ("activations", "Activation")):
            cls = getattr(exporter, cls_name)
            for file in sorted((folder / kind).glob("*.jsonl.gz")):
                for line in gzip.open(file, "rt"):
                    _row_fits(json.loads(line), cls)
                    counts[kind] = counts.get(kind, 0) + 1
        for name, cls_name in (
            ("model", "Model"),
            ("source", "Source"),
            ("release", "SourceRelease"),
            ("sourceset", "SourceSet"),
        ):
            _row_fits(json.loads((folder / f"{name}.jsonl").read_text()), getattr(exporter, cls_name))
        return f"{counts} rows build neuronpedia_export's dataclasses"

    check(rows, "Neuronpedia bulk-import rows build SAEDashboard's exporter rows", bulk)


def _row_fits(row: dict, cls) -> None:
    """``row`` has exactly the fields of dataclass ``cls``, each of its declared type
    (datetimes as the RFC 3339 strings the exporter writes)."""
    import dataclasses
    import datetime
    import typing

    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(row) == set(fields), f"{cls.__name__}: missing {set(fields) - set(row)}, extra {set(row) - set(fields)}"
    hints = typing.get_type_hints(cls)
    for name, value in row.items():
        assert _fits(value, hints[name], datetime), f"{cls.__name__}.{name}: {value!r} is not {hints[name]}"
    cls(**row)


def _fits(value, annotation, datetime) -> bool:
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return any(_fits(value, a, datetime) for a in args)
    if annotation is type(None):
        return value is None
    if origin in (list, list):
        return (
            isinstance(value, list) and all(_fits(v, args[0], datetime) for v in value)
            if args
            else isinstance(value, list)
        )
    if annotation is datetime.datetime:
        return isinstance(value, str) and bool(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _typed(record: dict, cls, *, skip=(), optional=()) -> None:
    """Every parameter of ``cls``'s constructor is in ``record``, of the type it declares."""
    import inspect
    import typing

    hints = typing.get_type_hints(cls.__init__)
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self" or name in skip:
            continue
        if name not in record:
            assert name in optional, f"{cls.__name__}: field {name} is missing"
            continue
        expected = typing.get_origin(hints.get(name)) or hints.get(name)
        value = record[name]
        if expected is float:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name}: {value!r} is no number"
        elif expected in (int, str, list, dict):
            assert isinstance(value, expected), f"{name}: {type(value).__name__}, not {expected.__name__}"


def small_run(folder: Path) -> Path:
    """A small real run (SmolLM2 layer 6, Shakespeare): 16k tokens, a TopK SAE, its report."""
    from saekit.app.cli import main

    flags = [
        "--model.hook",
        "layers.6.resid_post",
        "--harvest.tokens",
        "16384",
        "--corpus.context_size",
        "64",
        "--sae.expansion",
        "4",
        "--sae.k",
        "16",
        "--train.steps",
        "60",
        "--train.batch_size",
        "512",
        "--evaluate.tokens",
        "2048",
        "--interpret.tokens",
        "8192",
        "--interpret.n_top",
        "8",
    ]
    assert main(["run", "--out", str(folder), *flags]) == 0, "the small run failed"
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run folder with feature statistics (default: make a small one)")
    parser.add_argument("--saedashboard-src", type=Path, help="a checkout of SAEDashboard (for its neuronpedia_export)")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    work = Path(tempfile.mkdtemp(prefix="saekit-interop-"))
    rows: list[dict] = []
    try:
        run = args.run or small_run(work / "run")
        dictionary_learning_rows(rows, work)
        saebench_rows(rows, run)
        neuronpedia_rows(rows, run, work, args.saedashboard_src)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(command_line())
    print(
        ", ".join(
            f"{p} {version(p)}" for p in ("torch", "dictionary-learning", "sae-bench", "sae-dashboard", "sae-lens")
        )
    )
    print(markdown_table(rows, ["check", "result", "detail"]))
    if any(row["result"] == "FAIL" for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
