"""The commands that make and use run folders, stores and SAEs: run, demo, config, train,
harvest, evaluate / interpret / report, export, sweep, compare, convert (``cli`` wires
them to their flags)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path

from .._runtime.errors import ConfigValueError, SaekitError
from .flags import collected

DEMO_CONFIG = Path(__file__).with_name("demo.toml")


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
