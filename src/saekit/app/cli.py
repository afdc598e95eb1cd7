"""The command line: a thin layer over saekit's functions.

    saekit demo                         the main job on the embedded model and corpus
    saekit run CONFIG [--train.steps N ...]   the main job on your own config
    saekit harvest / train / evaluate / report / sweep / compare / convert / config
    saekit steer / ablate RUN --feature F ...       what a feature does to the output
    saekit contrast RUN --corpus A --against B      the features corpus A brings out more than B

Flags for configuration fields are generated from the dataclasses that define them: each
is parsed to the field's declared type when argparse reads it (1e-3 is a float, 0.9,0.999
a pair), and its help is the field's own documentation. Every anticipated failure is one
line and exit code 2 (``main``); anything else is reported as a bug in saekit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._runtime.errors import ConfigValueError, SaekitError
from .._runtime.parsing import coerce, describe, example, field_docs, field_types, format_value

DEMO_CONFIG = Path(__file__).with_name("demo.toml")
REPORT_BUGS = "https://github.com/saekit/saekit/issues"


# ---- a parser whose errors are one line ---------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def value_type(annotation: Any, flag: str, default: Any = None):
    """An argparse ``type=``: text parsed to ``annotation``, or a message naming what is
    allowed with an example."""

    def parse(text: str) -> Any:
        try:
            return coerce(text, annotation, flag)
        except ConfigValueError:
            raise argparse.ArgumentTypeError(
                f"must be {describe(annotation)}, got {text!r} (for example {flag} {example(annotation, default)})"
            ) from None

    parse.__name__ = describe(annotation)  # argparse names the type in some messages
    return parse


def add_dataclass_flags(
    parser, cls: type, *, prefix: str = "", skip: Sequence[str] = (), flags: dict | None = None
) -> None:
    """One flag per field of ``cls``: ``--prefix.field`` with a prefix, else ``--field-name``."""
    docs, types = field_docs(cls), field_types(cls)
    defaults = (
        cls()
        if all(
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            for f in dataclasses.fields(cls)
        )
        else None
    )
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f"--{prefix}{f.name}" if prefix else f"--{f.name.replace('_', '-')}"
        default = getattr(defaults, f.name) if defaults is not None else None
        help_text = docs.get(f.name, "")
        if defaults is not None:
            help_text += f" (default: {format_value(default) if not isinstance(default, dict) else default})"
        extra: dict[str, Any] = {}
        if types[f.name] is bool:
            extra = {"nargs": "?", "const": True}  # --fit-scale alone means true
        parser.add_argument(
            flag,
            dest=f"{prefix}{f.name}",
            type=value_type(types[f.name], flag, default),
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=help_text.replace("%", "%%"),
            **extra,
        )
        if flags is not None:
            flags[f"{prefix}{f.name}"] = flag


def collected(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {
        key[len(prefix) :]: value
        for key, value in vars(args).items()
        if key.startswith(prefix) and key[len(prefix) :] in names
    }


# ---- subcommands ------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> None:
    from .config import RunConfig, section_classes
    from .pipeline import run_pipeline, say

    config = RunConfig.from_file(args.config) if args.config else RunConfig()
    overrides = {}
    for section, cls in section_classes().items():
        overrides.update({f"{section}.{k}": v for k, v in collected(args, cls, prefix=f"{section}.").items()})
    config = config.with_overrides(overrides)
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "run")
    run = run_pipeline(out, config, overwrite=args.overwrite, verify=not args.no_verify)
    say(f"done. Dashboard: {run.report_path.resolve()}")
    say(f"metrics: {run.metrics_path.resolve()}")


def cmd_demo(args: argparse.Namespace) -> None:
    args.config = str(DEMO_CONFIG)
    args.out = args.out or "runs/demo"
    cmd_run(args)


def cmd_config(args: argparse.Namespace) -> None:
    from .config import describe_config

    print(describe_config() if args.defaults else DEMO_CONFIG.read_text(), end="")


def cmd_train(args: argparse.Namespace) -> None:
    from .._runtime.distributed import init_distributed_from_env, shutdown
    from .._runtime.folder import OutputFolder
    from ..data.source import hooks_of, open_data
    from ..training.config import TrainConfig
    from .config import SAESection
    from .recipes import OUTPUTS, identity, train_sae

    ctx = init_distributed_from_env()
    try:
        store = open_data(args.activations, verify=not args.no_verify)
        section = SAESection(**collected(args, SAESection))
        train_cfg = TrainConfig(**collected(args, TrainConfig))
        hook, hook_out = hooks_of(store)
        if hook_out is not None and not section.transcoder:
            section = dataclasses.replace(section, transcoder=True)  # paired data: a transcoder
        d_out = getattr(store, "d_out", None)
        section.check(store.d_in, d_out=d_out)
        model = store.manifest.get("model") if hasattr(store, "manifest") else store.inputs.manifest.get("model")
        folder, error = None, None
        if ctx.is_main:
            try:
                folder = OutputFolder(
                    args.out,
                    kind="sae-training",
                    owns=OUTPUTS,
                    overwrite=args.overwrite,
                    identity=identity(
                        section,
                        train_cfg,
                        store.fingerprint(),
                        d_in=store.d_in,
                        hook=hook,
                        model=model,
                        hook_out=hook_out,
                    ),
                )
                folder.open()
            except SaekitError as caught:
                error = caught
        ctx.raise_together(error, f"opening {args.out}")
        with folder or contextlib.nullcontext():
            if ctx.broadcast_flag(folder is not None and folder.has("sae")):
                if ctx.is_main:
                    print(f"{args.out}: done already, with these settings; the SAE is {Path(args.out) / 'sae'}")
                return
            sae = train_sae(
                Path(args.out),
                folder,
                section,
                train_cfg,
                store,
                d_in=store.d_in,
                hook=hook,
                model=model,
                hook_out=hook_out,
                d_out=d_out,
            )
        if ctx.is_main:
            provenance = sae.cfg.provenance
            print(f"saved {Path(args.out) / 'sae'}  ({provenance.get('tokens', 0):,} tokens)")
    finally:
        shutdown()


def cmd_harvest(args: argparse.Namespace) -> None:
    from .._runtime.distributed import init_distributed_from_env, shutdown
    from ..data.corpus import default_corpus_path, read_documents, tokenize
    from ..data.distributed_harvest import harvest_distributed
    from ..data.model import load_model, parse_hook

    for flag, hooks in (("--hook", args.hook), ("--hook-out", [args.hook_out] if args.hook_out else [])):
        for hook in hooks:
            try:
                parse_hook(hook)
            except ValueError as error:
                raise ConfigValueError(f"{flag}: {error}") from None
    if args.hook_out is not None and len(args.hook) != 1:
        raise ConfigValueError("--hook-out pairs one target with one input: give a single --hook.")
    ctx = init_distributed_from_env()  # under torchrun each rank runs its share of the shards
    try:
        corpus_path = default_corpus_path() if args.corpus == "default" else Path(args.corpus)
        documents = read_documents(corpus_path, text_field=args.text_field)
        loaded = load_model(args.model, dtype=args.model_dtype, device=args.device)
        max_contexts = None if args.tokens is None else args.tokens // (args.context_size - 1) + 2
        corpus = tokenize(documents, loaded.tokenizer, args.context_size, max_contexts=max_contexts)
        hooks = [args.hook[0], args.hook_out] if args.hook_out else args.hook[0] if len(args.hook) == 1 else args.hook
        stores = harvest_distributed(
            loaded,
            corpus,
            hooks,
            args.out,
            max_tokens=args.tokens,
            dtype=args.dtype,
            batch_contexts=args.batch_contexts,
            overwrite=args.overwrite,
            progress=ctx.is_main,
        )
        if ctx.is_main:
            if args.hook_out:  # a transcoder's pairs: the two stores, and which is which
                from ..data.pairs import write_pairs_file

                write_pairs_file(Path(args.out), *stores)
            for store in stores.values():
                print(f"{store.path}: {store.n_tokens:,} tokens x d_in={store.d_in} ({store.manifest['dtype']})")
    finally:
        shutdown()


def cmd_stage(args: argparse.Namespace) -> None:
    """evaluate / interpret / report: on an existing run folder, or on an SAE from anywhere
    (--sae) with a model and a corpus, into a new run folder."""
    from .pipeline import open_run, run_pipeline, run_stages, say

    stages = {
        "evaluate": ("evaluate",),
        "report": ("interpret", "steer", "report"),
        "interpret": ("interpret",),
    }[args.command]
    if args.sae is not None:
        if args.run is not None:
            raise ConfigValueError(f"saekit {args.command}: give a run folder or --sae, not both.")
        run = run_pipeline(args.out or _default_out(args.sae), _config_for(args), stages=("train", *stages))
    else:
        if args.run is None:
            raise ConfigValueError(f"saekit {args.command} needs a run folder (RUN), or --sae SOURCE with --model.")
        run = open_run(args.run, write=True)
        try:
            for stage in stages:
                if run.done(stage) and not args.force:
                    say(f"{stage}: done already (use --force to redo)")
                    continue
                run_stages(run, (stage,), force=True)
        finally:
            run.output_folder.close()
    if args.command == "evaluate":
        from ..evaluation.splice import print_table, read_metrics

        metrics = read_metrics(run.metrics_path)
        print_table(metrics)
        if args.saebench:
            _write_saebench(args.saebench, run, metrics, overwrite=args.overwrite)
    else:
        say(f"dashboard: {run.report_path.resolve()}")


def _config_for(args: argparse.Namespace):
    """A run config that evaluates and explains the SAE of --sae on --model and --corpus."""
    from ..formats import load
    from .config import RunConfig

    hook = args.hook or load(args.sae).cfg.hook
    if hook is None:
        raise ConfigValueError(f"--sae {args.sae}: the SAE does not say which hook point it reads; give --hook.")
    return RunConfig().with_overrides(
        {
            "model.name": args.model,
            "model.hook": hook,
            "corpus.path": args.corpus,
            "sae.load": args.sae,
            "evaluate.tokens": args.tokens,
        }
    )


def _default_out(source: str) -> Path:
    name = source.rstrip("/").split("/")[-1] or "sae"
    return Path("runs") / f"eval-{name}"


def _write_saebench(target: str, run, metrics: dict, *, overwrite: bool) -> None:
    from .._runtime.atomic import atomic_write_json
    from .._runtime.errors import FolderError
    from ..evaluation.saebench import core_eval_output

    path = Path(target)
    if path.exists() and not overwrite:
        raise FolderError(f"--saebench {path} already exists; choose another file, or add --overwrite to replace it.")
    config = run.config
    output = core_eval_output(
        metrics,
        run.load_sae(),
        model_name=config.model.name,
        context_size=config.corpus.context_size,
        dataset=config.corpus.path,
    )
    atomic_write_json(path, output)
    print(f"SAEBench core-eval result: {path}")


def cmd_export(args: argparse.Namespace) -> None:
    """saekit export neuronpedia RUN --out DIR"""
    from .._runtime.folder import OutputFolder
    from ..interpret import FeatureStats
    from ..report.neuronpedia import export_neuronpedia
    from .pipeline import open_run, say

    run = open_run(args.run, write=False)
    if not (run.features_path / "feature_stats.safetensors").is_file():
        raise ConfigValueError(f"{args.run} has no feature statistics yet; run `saekit report {args.run}` first.")
    stats = FeatureStats.load(run.features_path)
    model_id = args.model_id or run.config.model.name.replace("/", "-")
    with OutputFolder(
        args.out,
        kind="neuronpedia-export",
        identity={"run": str(Path(args.run).resolve()), "model_id": model_id, "set": args.source_set},
        overwrite=args.overwrite,
    ) as folder:
        folder.output(model_id)
        source = export_neuronpedia(
            folder.path,
            run.load_sae(),
            stats,
            run.model,
            model_id=model_id,
            source_set=args.source_set,
            dataset=run.config.corpus.path,
            n_features=args.features,
        )
        folder.finished(model_id)
        folder.finished(*sorted(p.name for p in folder.path.glob("batch-*.json")))
    say(f"Neuronpedia export: {source} (bulk-import layout) and {folder.path}/batch-*.json (SAEDashboard batches)")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .._runtime.distributed import init_distributed_from_env, shutdown
    from .sweep import sweep

    init_distributed_from_env()  # under torchrun the SAEs are spread over the ranks
    try:
        sweep(
            Path(args.run),
            archs=args.archs,
            l0s=args.l0s,
            steps=args.steps,
            out=Path(args.out) if args.out else None,
            overwrite=args.overwrite,
        )
    finally:
        shutdown()


def cmd_compare(args: argparse.Namespace) -> None:
    from .._runtime.atomic import atomic_write_json
    from .._runtime.errors import FolderError
    from ..evaluation.compare import print_comparison
    from .compare_cmd import compare_runs

    if args.json and Path(args.json).exists() and not args.overwrite:
        raise FolderError(f"--json {args.json} already exists; choose another file, or add --overwrite to replace it.")
    result = compare_runs(args.a, args.b, threshold=args.threshold, all_latents=args.all_latents)
    print_comparison(result, limit=args.limit)
    if args.json:
        atomic_write_json(args.json, result)


def _sae_folder(path: str) -> Path:
    """A run folder's SAE, or the SAE folder itself."""
    return Path(path) / "sae" if (Path(path) / "sae" / "cfg.json").is_file() else Path(path)


def cmd_convert(args: argparse.Namespace) -> None:
    from ..formats import load as load_sae
    from ..sae.convert import convert

    converted = convert(load_sae(_sae_folder(args.sae)), args.to)
    converted.save(args.out, overwrite=args.overwrite)
    print(f"saved {args.out}")


# ---- saekit explain (autointerp) ------------------------------------------------------------------
def cmd_explain(args: argparse.Namespace) -> None:
    """saekit explain RUN: explanations of features, scored by detection and fuzzing."""
    from ..interpret.autointerp import EXPLANATIONS_FILE, ExplainConfig, explain_features
    from .pipeline import say

    names = [s.strip() for s in args.scorers.split(",") if s.strip()]
    scorers = [] if names == ["none"] else names
    n_test = {"n_test": args.n_test, "n_negatives": args.n_test} if args.n_test else {}
    config = ExplainConfig(scorers=tuple(scorers), tokens=args.tokens, window=args.window, **n_test)
    records = explain_features(
        args.run,
        args.ids if args.ids is not None else args.features,
        args.explainer,
        config=config,
        model=args.model,
        api_key_env=args.api_key_env,
        overwrite=args.overwrite,
    )
    for r in records:
        scores = "  ".join(f"{k} {r[k]:.2f}" if r.get(k) is not None else f"{k} -" for k in ("detection", "fuzzing"))
        print(f"feature {r['feature']:>6}  {scores}  {r['explanation']}")
    for kind in ("detection", "fuzzing"):
        values = [r[kind] for r in records if r.get(kind) is not None]
        if values:
            unparsed = sum(r.get(f"{kind}_unparsed", 0) for r in records)
            total = sum(r.get(f"n_{kind}", 0) for r in records)
            say(
                f"mean {kind} balanced accuracy {sum(values) / len(values):.3f} over {len(values)} features "
                f"(chance 0.5; {unparsed} of {total} answers unreadable, counted wrong)"
            )
    say(f"explanations: {Path(args.run) / 'features' / EXPLANATIONS_FILE}")
    if (Path(args.run) / "report").is_dir():  # the dashboard shows them: rebuild its pages
        from .pipeline import open_run, run_stages

        run = open_run(args.run, write=True)
        try:
            run_stages(run, ("report",), force=True)
        finally:
            run.output_folder.close()
        say(f"dashboard, with the explanations: {run.report_path.resolve()}")


def _feature_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"must be feature ids ≥ 0 separated by commas (e.g. 3,17,42), got {text!r}")
    return ids


def add_explain_parser(commands, PositiveInt) -> None:
    p = commands.add_parser(
        "explain",
        help="explain features with an LLM and score the explanations (detection, fuzzing)",
        description="An LLM reads each feature's top and quantile-sampled examples (active tokens marked) "
        "and writes one sentence; the sentence is scored on held-out examples it did not see, against "
        "random non-activating ones, as balanced accuracy (Delphi's detection and fuzzing). Results: "
        "RUN/features/explanations.jsonl; a rerun skips features already explained with the same settings.",
    )
    p.add_argument("run", help="run folder (from `saekit run` or `saekit demo`)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--features",
        type=value_type(PositiveInt, "--features", 20),
        default=None,
        help="how many features, chosen at random among those that fire (default: 20)",
    )
    which.add_argument("--ids", type=_feature_ids, help="which features, e.g. --ids 3,17,42")
    p.add_argument(
        "--explainer",
        default="local:",
        help="local:MODEL (a Hugging Face chat model; local: alone is the embedded SmolLM2-135M-Instruct) "
        "or openai:URL (any OpenAI-compatible server, e.g. openai:http://127.0.0.1:8080)",
    )
    p.add_argument("--model", help="with openai:URL: the model name to request (default: what the server serves)")
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="with openai:URL: the environment variable holding the API key (default: OPENAI_API_KEY if set)",
    )
    p.add_argument("--scorers", default="detection,fuzzing", help="detection,fuzzing, one of them, or none")
    p.add_argument(
        "--n-test",
        type=value_type(PositiveInt, "--n-test", 20),
        default=None,
        help="held-out activating and as many non-activating examples per scorer (default: 20)",
    )
    p.add_argument(
        "--tokens",
        type=value_type(PositiveInt, "--tokens", 200_000),
        default=200_000,
        help="store tokens scanned for examples (default: 200000)",
    )
    p.add_argument(
        "--window",
        type=value_type(PositiveInt, "--window", 24),
        default=24,
        help="tokens per example window (default: 24; Delphi: 32)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace explanations made with other settings (that file only)"
    )
    p.set_defaults(func=cmd_explain)


# ---- saekit steer / ablate / contrast (what a feature does; what a corpus brings out) ----------
def cmd_steer(args: argparse.Namespace) -> None:
    from .steer_cmd import print_steer, run_steer

    result = run_steer(
        args.run,
        args.feature,
        args.prompt,
        strength=args.strength,
        clamp=args.clamp,
        unit=args.unit,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        json_path=args.json,
        overwrite=args.overwrite,
    )
    print_steer(result)


def cmd_ablate(args: argparse.Namespace) -> None:
    from .steer_cmd import print_ablate, run_ablate

    print_ablate(run_ablate(args.run, args.feature, args.text, k=args.k, json_path=args.json, overwrite=args.overwrite))


def cmd_contrast(args: argparse.Namespace) -> None:
    from .contrast_cmd import print_contrast, run_contrast

    result = run_contrast(
        args.run,
        args.corpus,
        args.against,
        tokens=args.tokens,
        top=args.top,
        json_path=args.json,
        overwrite=args.overwrite,
        seed=args.seed,
        alpha=args.alpha,
    )
    print_contrast(result, top=args.top)


def add_feature_tool_parsers(commands, PositiveInt) -> None:
    from .._runtime.parsing import NonNegativeFloat, NonNegativeInt, OpenFraction

    def common(p, json_help: str) -> None:
        p.add_argument("run", help="run folder (from `saekit run` or `saekit demo`)")
        p.add_argument("--json", metavar="FILE", help=json_help)
        p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")

    p = commands.add_parser(
        "steer",
        help="generate with a feature steered (or clamped) beside the unsteered continuation",
        description="Greedy continuations of a prompt with and without the edit x <- x + S*d_F at the SAE's "
        "hook point (d_F: the feature's unit decoder direction), or with the feature's activation clamped to V "
        "(the SAE's reconstruction error is kept). S and V are multiples of the feature's max activation on the "
        "run's corpus (--unit max, the default), or absolute (--unit abs).",
    )
    common(p, "also write the continuations to this JSON file")
    p.add_argument("--feature", required=True, type=value_type(NonNegativeInt, "--feature", 12), help="feature id")
    p.add_argument("--strength", type=value_type(float, "--strength", 4.0), help="steering strength S")
    p.add_argument("--clamp", type=value_type(float, "--clamp", 2.0), help="clamp the feature's activation to V")
    p.add_argument(
        "--unit", choices=["max", "abs"], default="max", help="S and V in multiples of the max activation, or absolute"
    )
    p.add_argument("--prompt", action="append", required=True, help="text to continue (repeat for several)")
    p.add_argument(
        "--max-new-tokens", type=value_type(PositiveInt, "--max-new-tokens", 32), default=32, help="default: 32"
    )
    p.add_argument(
        "--temperature",
        type=value_type(NonNegativeFloat, "--temperature", 0.0),
        default=0.0,
        help="0 (the default): greedy; above 0: sampled with --seed",
    )
    p.add_argument("--seed", type=value_type(NonNegativeInt, "--seed", 0), default=0, help="sampling seed")
    p.set_defaults(func=cmd_steer)

    p = commands.add_parser(
        "ablate",
        help="how the next-token log-probabilities change when a feature is removed",
        description="Removes the feature (x <- x - f_F*w_F at every token, the SAE's reconstruction error kept) "
        "and shows per position: the feature's activation, the change of the actual next token's log-prob, and "
        "the tokens whose log-prob rises and falls most.",
    )
    common(p, "also write the per-position changes to this JSON file")
    p.add_argument("--feature", required=True, type=value_type(NonNegativeInt, "--feature", 12), help="feature id")
    p.add_argument("--text", required=True, help="the text to run with and without the feature")
    p.add_argument("--k", type=value_type(PositiveInt, "--k", 3), default=3, help="tokens shown up and down")
    p.set_defaults(func=cmd_ablate)

    p = commands.add_parser(
        "contrast",
        help="the features corpus A brings out more than corpus B (firing rates, log-odds with a bound)",
        description="Runs the run's SAE over two corpora and ranks its features by the lower confidence bound "
        "of the smoothed log-odds ratio of firing on A against B (Bonferroni over the features), so that a "
        "feature firing twice on A is not 'specific'. Corpora: a path, or parts of the embedded Shakespeare: "
        "default:comedies, default:tragedies, default:comedies,romances, default:tragedies/hamlet "
        "(groups: comedies, histories, problems, roman, romances, tragedies).",
    )
    common(p, "also write the whole ranking (rates, log-odds, bound, top tokens) to this JSON file")
    p.add_argument("--corpus", required=True, metavar="A", help="corpus A (see above)")
    p.add_argument("--against", required=True, metavar="B", help="corpus B (see above)")
    p.add_argument("--top", type=value_type(PositiveInt, "--top", 20), default=20, help="features shown (default 20)")
    p.add_argument(
        "--tokens",
        type=value_type(PositiveInt, "--tokens", 50_000),
        default=50_000,
        help="tokens sampled from each corpus, as random whole contexts (default: 50000)",
    )
    p.add_argument(
        "--alpha",
        type=value_type(OpenFraction, "--alpha", 0.05),
        default=0.05,
        help="family-wise significance level of the bound (default: 0.05)",
    )
    p.add_argument("--seed", type=value_type(NonNegativeInt, "--seed", 0), default=0, help="context sampling seed")
    p.set_defaults(func=cmd_contrast)


# ---- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .._runtime.parsing import PositiveFloat, PositiveInt
    from ..sae.registry import ARCHITECTURES
    from ..training.config import TrainConfig
    from .config import SAESection, section_classes

    parser = Parser(
        prog="saekit",
        description="Train, evaluate and explain sparse autoencoders on language-model activations.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `saekit demo`. Every command has --help.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def run_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="run folder (default: runs/<config name>, runs/demo for the demo)")
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace a run made there with other settings (deletes only the files saekit wrote there)",
        )
        p.add_argument("--no-verify", action="store_true", help="skip the store's checksum pass (it is on by default)")
        flags: dict[str, str] = {}
        for section, cls in section_classes().items():
            group = p.add_argument_group(f"[{section}] fields (override the config file)")
            add_dataclass_flags(group, cls, prefix=f"{section}.", flags=flags)
        p.set_defaults(_flags=flags)

    p = commands.add_parser(
        "demo",
        help="the main job on the embedded model (SmolLM2-135M) and corpus (Shakespeare)",
        description="Corpus -> SmolLM2-135M layer 15 -> activation store -> TopK SAE -> "
        "evaluation in the model -> feature dashboard. About 4 minutes on a 2-core CPU. "
        "Interrupt it at any time; the same command continues where it stopped.",
    )
    run_flags(p)
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser(
        "run",
        help="the main job from a config file (TOML or YAML)",
        description="Run every stage (harvest, train, evaluate, interpret, report) into one "
        "run folder; finished stages are skipped, interrupted ones resume.",
    )
    p.add_argument(
        "config", nargs="?", help="config file (.toml, .yaml); `saekit config --defaults` prints every field"
    )
    run_flags(p)
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("config", help="print the demo config, or every field with its default and meaning")
    p.add_argument("--defaults", action="store_true", help="print every field, documented, with its default")
    p.set_defaults(func=cmd_config)

    p = commands.add_parser(
        "train",
        help="train an SAE on an activation store (works under torchrun)",
        description="Train one SAE on a store made by `saekit harvest`. Under `torchrun "
        "--nproc-per-node N -m saekit train ...` it trains data-parallel.",
    )
    p.add_argument("--activations", required=True, help="activation store folder (from `saekit harvest`)")
    p.add_argument("--out", required=True, help="output folder: train/ (checkpoint, train_log.jsonl), sae/")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run made there with other settings (deletes only the files saekit wrote there)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the store's checksum pass (it is on by default)")
    flags: dict[str, str] = {}
    add_dataclass_flags(p.add_argument_group("SAE"), SAESection, flags=flags)  # type: ignore[arg-type]
    add_dataclass_flags(p.add_argument_group("training"), TrainConfig, flags=flags)  # type: ignore[arg-type]
    p.set_defaults(func=cmd_train, _flags=flags)

    for name, text in (
        (
            "evaluate",
            "evaluate a run's SAE (or any SAE, --sae) inside the model on held-out text: metrics.json + table",
        ),
        ("interpret", "collect per-feature statistics of a run (top contexts, logit effects)"),
        ("report", "write a run's HTML dashboard (collects feature statistics first if needed)"),
    ):
        p = commands.add_parser(name, help=text, description=text)
        p.add_argument("run", nargs="?", help="run folder (from `saekit run` or `saekit demo`)")
        p.add_argument("--force", action="store_true", help="redo the stage even if its output exists")
        p.add_argument(
            "--sae",
            help="an SAE from anywhere instead of a run: a saekit, SAELens, sparsify or "
            "dictionary_learning folder, hf://ORG/REPO/PATH, saelens://RELEASE/SAE_ID (needs --model)",
        )
        p.add_argument("--model", default="smollm2", help="with --sae: the model the SAE reads (default: smollm2)")
        p.add_argument("--hook", help="with --sae: its hook point, when the SAE does not say")
        p.add_argument("--corpus", default="default", help="with --sae: the texts (default: Shakespeare)")
        p.add_argument(
            "--tokens",
            type=value_type(PositiveInt, "--tokens", 16384),
            default=16384,
            help="with --sae: held-out tokens to evaluate on",
        )
        p.add_argument("--out", help="with --sae: the run folder to make (default: runs/eval-<name>)")
        p.add_argument("--overwrite", action="store_true", help="replace the --saebench file if it exists")
        if name == "evaluate":
            p.add_argument("--saebench", metavar="FILE", help="also write the metrics in SAEBench's core-eval schema")
        p.set_defaults(func=cmd_stage)

    p = commands.add_parser("export", help="write a run's features in another tool's format (neuronpedia)")
    p.add_argument("format", choices=["neuronpedia"], help="neuronpedia: SAEDashboard batches + bulk-import layout")
    p.add_argument("run", help="run folder with feature statistics (saekit report RUN makes them)")
    p.add_argument("--out", required=True, help="export folder")
    p.add_argument("--model-id", help="Neuronpedia's model id (default: the run's model name)")
    p.add_argument("--source-set", default="saekit", help="Neuronpedia source set name (default: saekit)")
    p.add_argument("--features", type=value_type(PositiveInt, "--features", 1000), help="only the first N features")
    p.add_argument("--overwrite", action="store_true", help="replace an export made there with other settings")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser(
        "sweep",
        help="train several architectures and sparsities on a run's activations, compare them",
        description="Train every architecture at several L0s on the activations of an existing "
        "run, evaluate each inside the model, write a table and Pareto plots (L0 vs FVU, L0 vs "
        "loss recovered) with each SAE's relative reconstruction bias.",
    )
    p.add_argument("run", help="run folder whose store and held-out text the sweep uses")
    p.add_argument(
        "--archs",
        nargs="+",
        default=list(ARCHITECTURES),
        choices=ARCHITECTURES,
        metavar="ARCH",
        help=f"architectures (default: all of {', '.join(ARCHITECTURES)})",
    )
    p.add_argument(
        "--l0s",
        nargs="+",
        type=value_type(PositiveFloat, "--l0s", 32),
        default=[16, 32, 64],
        help="target L0s (k for topk/batchtopk)",
    )
    p.add_argument(
        "--steps",
        type=value_type(PositiveInt, "--steps", 2000),
        default=None,
        help="training steps per SAE (default: the run's)",
    )
    p.add_argument("--out", help="sweep folder (default: RUN/sweep)")
    p.add_argument("--overwrite", action="store_true", help="retrain SAEs made there with other settings")
    p.set_defaults(func=cmd_sweep)

    p = commands.add_parser(
        "compare",
        help="match the features of two SAEs; list those of A with no counterpart in B",
        description="Features matched by decoder cosine similarity. E.g. an SAE trained on one "
        "author's texts against one trained on a general corpus: A's unmatched features are "
        "the author's own.",
    )
    p.add_argument("a", help="run folder or SAE folder A")
    p.add_argument("b", help="run folder or SAE folder B")
    p.add_argument(
        "--threshold",
        type=value_type(float, "--threshold", 0.7),
        default=0.7,
        help="a feature has a counterpart when its best cosine is at least this",
    )
    p.add_argument(
        "--limit", type=value_type(PositiveInt, "--limit", 30), default=30, help="unmatched features to print"
    )
    p.add_argument(
        "--all-latents",
        action="store_true",
        help="keep latents that never fired or are still at their initial direction (left out by default)",
    )
    p.add_argument("--json", help="also write the full comparison to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file if it exists")
    p.set_defaults(func=cmd_compare)

    p = commands.add_parser(
        "convert", help="convert an SAE to the exactly equivalent JumpReLU SAE (gated, batchtopk, relu)"
    )
    p.add_argument("sae", help="SAE folder (or run folder)")
    p.add_argument("--to", default="jumprelu", choices=["jumprelu"])
    p.add_argument("--out", required=True, help="output SAE folder")
    p.add_argument("--overwrite", action="store_true", help="replace the SAE in --out")
    p.set_defaults(func=cmd_convert)
    add_explain_parser(commands, PositiveInt)
    add_feature_tool_parsers(commands, PositiveInt)

    from ..data.harvest import DEFAULT_BATCH_CONTEXTS

    p = commands.add_parser(
        "harvest",
        help="run a model over a corpus and store its activations at hook points",
        description="Tokenise a corpus, run the model up to the last hooked layer only, and write "
        "a sharded, checksummed, memory-mappable activation store. An interrupted harvest resumes. "
        "Under torchrun each rank harvests its own slice.",
    )
    p.add_argument(
        "--model", default="smollm2", help="embedded name (smollm2, gemma3-270m), .gguf file, HF folder or Hub id"
    )
    p.add_argument(
        "--hook", nargs="+", default=["layers.15.resid_post"], help="hook point(s), e.g. layers.15.resid_post"
    )
    p.add_argument(
        "--hook-out",
        help="a transcoder's target hook point (e.g. layers.9.mlp_out for --hook "
        "layers.9.mlp_in): both are stored, aligned, for saekit train --transcoder",
    )
    p.add_argument(
        "--corpus", default="default", help="text folder/file, .jsonl, .parquet, datasets folder; default: Shakespeare"
    )
    p.add_argument("--text-field", help="field holding the text (JSON Lines, Parquet, datasets)")
    p.add_argument(
        "--tokens",
        type=value_type(PositiveInt, "--tokens", 1_000_000),
        default=None,
        help="tokens of activations to store (default: the whole corpus)",
    )
    p.add_argument(
        "--context-size", type=value_type(PositiveInt, "--context-size", 128), default=128, help="tokens per context"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="stored dtype")
    p.add_argument(
        "--model-dtype",
        default=None,
        choices=["bfloat16", "float32"],
        help="dtype the model runs in (default: bf16 where supported)",
    )
    p.add_argument(
        "--device",
        default=None,
        type=value_type(_device_type(), "--device", "cuda"),
        help="cpu, cuda, ... (default: cuda if available)",
    )
    p.add_argument(
        "--batch-contexts",
        type=value_type(PositiveInt, "--batch-contexts", DEFAULT_BATCH_CONTEXTS),
        default=DEFAULT_BATCH_CONTEXTS,
        help="contexts per forward pass",
    )
    p.add_argument("--out", required=True, help="store folder (one sub-folder per hook when several are given)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a store made there with other settings (deletes only the files saekit wrote)",
    )
    p.set_defaults(func=cmd_harvest)
    return parser


def _device_type():
    from .._runtime.parsing import Device

    return Device


# ---- running a command ------------------------------------------------------------------
_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--lr -1e-3`` as ``--lr=-1e-3``: argparse would read -1e-3 as a flag and say only
    "expected one argument"; joined, the flag's own check says what is wrong with it."""
    out: list[str] = []
    for token in argv:
        if out and _NEGATIVE_NUMBER.fullmatch(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _flag_message(args: argparse.Namespace, error: ConfigValueError) -> str:
    """An error about a config field, named as the flag the user typed where there is one."""
    flags = getattr(args, "_flags", {}) or {}
    field = error.field or ""
    for candidate in (field, field.split(": ")[-1], field.removeprefix("sae.")):
        if candidate in flags:
            message = str(error)
            return f"{flags[candidate]}: {message}"
    return str(error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else list(argv)))
    except SystemExit as exit:  # --help (0), or a bad flag, already explained in one line (2)
        return exit.code if isinstance(exit.code, int) else 2
    from .._runtime.allocator import keep_freed_memory

    keep_freed_memory()  # now, before a command starts torch.distributed's threads
    prog = f"saekit {args.command}"
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted. Run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    except SaekitError as error:
        if os.environ.get("SAEKIT_DEBUG"):
            raise
        message = _flag_message(args, error) if isinstance(error, ConfigValueError) else str(error)
        print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's, not saekit's: a full disk, a permission, a missing package file
        if os.environ.get("SAEKIT_DEBUG"):
            raise
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        print(f"{prog}: error: {' '.join(str(error.strerror or error).split())}{where}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - the one place that turns a bug into a report
        if os.environ.get("SAEKIT_DEBUG"):
            raise
        print(
            f"{prog}: internal error ({type(error).__name__}: {' '.join(str(error).split())[:300]}). This is a bug in "
            f"saekit: please report it at {REPORT_BUGS} with the command you ran and the traceback that "
            f"`SAEKIT_DEBUG=1 {prog} ...` prints.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
