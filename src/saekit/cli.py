"""The command line: a thin layer over saekit's functions.

    saekit demo                         the main job on the embedded model and corpus
    saekit run CONFIG [--train.steps N ...]   the main job on your own config
    saekit harvest / train / evaluate / report / sweep / compare / convert / config

Flags for configuration fields are generated from the dataclasses that define them, so
their help is the field's own documentation.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from .dataclass_io import ConfigValueError, field_docs

DEMO_CONFIG = Path(__file__).with_name("demo.toml")


# ---- flags generated from dataclasses ---------------------------------------------------
def _parse_value(text: str) -> Any:
    """A flag's value as YAML: 100 -> int, 1e-3 -> float, true, null, [1, 2], words -> str."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: Sequence[str] = ()) -> None:
    docs = field_docs(cls)
    defaults = cls() if all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
                            for f in dataclasses.fields(cls)) else None
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f"--{prefix}{f.name}" if prefix else f"--{f.name.replace('_', '-')}"
        default = getattr(defaults, f.name) if defaults is not None else None
        help_text = docs.get(f.name, "")
        if defaults is not None:
            help_text += f" (default: {default})"
        parser.add_argument(flag, dest=f"{prefix}{f.name}", type=_parse_value, default=argparse.SUPPRESS,
                            metavar=f.name.upper(), help=help_text.replace("%", "%%"))


def collected(args: argparse.Namespace, cls: type, *, prefix: str = "") -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {key[len(prefix):]: value for key, value in vars(args).items()
            if key.startswith(prefix) and key[len(prefix):] in names}


# ---- subcommands ------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> None:
    from .config import RunConfig, section_classes
    from .pipeline import run_pipeline, say

    config = RunConfig.from_file(args.config) if args.config else RunConfig()
    overrides = {}
    for section in section_classes():
        overrides.update({f"{section}.{k}": v for k, v in collected(args, section_classes()[section], prefix=f"{section}.").items()})
    config = config.with_overrides(overrides)
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "run")
    run = run_pipeline(out, config)
    say(f"done. Dashboard: {run.report_path.resolve()}")
    say(f"metrics: {run.metrics_path.resolve()}")


def cmd_demo(args: argparse.Namespace) -> None:
    args.config = str(DEMO_CONFIG)
    args.out = args.out or "runs/demo"
    cmd_run(args)


def cmd_config(args: argparse.Namespace) -> None:
    from .config import describe_config

    if args.defaults:
        print(describe_config(), end="")
    else:
        print(DEMO_CONFIG.read_text(), end="")


def cmd_train(args: argparse.Namespace) -> None:
    from .config import SAESection
    from .data.store import open_store
    from .distributed import init_distributed_from_env, shutdown
    from .fit_scale import fit_scale
    from .sae import create
    from .train import TrainConfig, train

    ctx = init_distributed_from_env()
    try:
        store = open_store(args.activations)
        section = SAESection(**collected(args, SAESection))
        sae = create(section.arch, d_in=store.d_in, d_sae=section.width(store.d_in), **section.sae_options())
        sae.cfg.hook, sae.cfg.model = store.manifest.get("hook"), store.manifest.get("model")
        result = train(sae, store, out=args.out, **collected(args, TrainConfig))
        if section.fit_scale:
            fit_scale(result.sae, store)
        if ctx.is_main:
            path = result.sae.save(Path(args.out) / "sae", overwrite=True)
            print(f"saved {path}  ({result.tokens:,} tokens in {result.seconds:.0f} s; "
                  f"{result.tokens / max(result.seconds, 1e-9):,.0f} tokens/s)")
    finally:
        shutdown()


def cmd_harvest(args: argparse.Namespace) -> None:
    from .data.corpus import default_corpus_path, read_documents, tokenize
    from .data.distributed_harvest import harvest_distributed
    from .data.model import load_model
    from .distributed import init_distributed_from_env, shutdown

    ctx = init_distributed_from_env()  # under torchrun each rank runs its share of the shards
    try:
        corpus_path = default_corpus_path() if args.corpus == "default" else Path(args.corpus)
        documents = read_documents(corpus_path, text_field=args.text_field)
        loaded = load_model(args.model, dtype=args.model_dtype, device=args.device)
        max_contexts = None if args.tokens is None else args.tokens // (args.context_size - 1) + 2
        corpus = tokenize(documents, loaded.tokenizer, args.context_size, max_contexts=max_contexts)
        hooks = args.hook[0] if len(args.hook) == 1 else args.hook
        stores = harvest_distributed(loaded, corpus, hooks, args.out, max_tokens=args.tokens, dtype=args.dtype,
                                     batch_contexts=args.batch_contexts, overwrite=args.overwrite,
                                     progress=ctx.is_main)
        if ctx.is_main:
            for store in (stores.values() if isinstance(stores, dict) else [stores]):
                print(f"{store.path}: {store.n_tokens:,} tokens x d_in={store.d_in} ({store.dtype})")
    finally:
        shutdown()


def cmd_stage(args: argparse.Namespace) -> None:
    """evaluate / interpret / report on an existing run folder."""
    from .config import RunConfig
    from .pipeline import Run, say

    folder = Path(args.run)
    if not (folder / "config.json").is_file():
        raise ConfigValueError(f"{folder} is not a run folder (no config.json); make one with `saekit run` or `saekit demo`.")
    run = Run(folder, RunConfig.from_file(folder / "config.json"))
    stages = {"evaluate": ("evaluate",), "report": ("interpret", "report"), "interpret": ("interpret",)}[args.command]
    for stage in stages:
        if run.done(stage) and not args.force:
            say(f"{stage}: done already (use --force to redo)")
            continue
        getattr(run, stage)()
    if args.command == "evaluate":
        from .splice_eval import print_table
        import json

        print_table(json.loads(run.metrics_path.read_text()))
    else:
        say(f"dashboard: {run.report_path.resolve()}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .distributed import init_distributed_from_env, shutdown
    from .sweep import sweep

    init_distributed_from_env()  # under torchrun the SAEs are spread over the ranks
    try:
        sweep(Path(args.run), archs=args.archs, l0s=args.l0s, steps=args.steps, out=Path(args.out) if args.out else None)
    finally:
        shutdown()


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import compare, print_comparison

    result = compare(args.a, args.b, threshold=args.threshold)
    print_comparison(result, limit=args.limit)
    if args.json:
        from .atomic import atomic_write_json

        atomic_write_json(args.json, result)


def cmd_convert(args: argparse.Namespace) -> None:
    from .sae.convert import convert
    from .sae.persistence import load_sae

    converted = convert(load_sae(args.sae), args.to)
    converted.save(args.out)
    print(f"saved {args.out}")


# ---- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .config import SAESection, section_classes
    from .train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="saekit",
        description="Train, evaluate and explain sparse autoencoders on language-model activations.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `saekit demo`. Every command has --help.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def run_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="run folder (default: runs/<config name>, runs/demo for the demo)")
        for section, cls in section_classes().items():
            group = p.add_argument_group(f"[{section}] fields (override the config file)")
            add_dataclass_flags(group, cls, prefix=f"{section}.")  # type: ignore[arg-type]

    p = commands.add_parser("demo", help="the main job on the embedded model (SmolLM2-135M) and corpus (Shakespeare)",
                            description="Corpus -> SmolLM2-135M layer 15 -> activation store -> TopK SAE -> "
                            "evaluation in the model -> feature dashboard. About 10 minutes on a 2-core CPU. "
                            "Interrupt it at any time; the same command continues where it stopped.")
    run_flags(p)
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("run", help="the main job from a config file (TOML or YAML)",
                            description="Run every stage (harvest, train, evaluate, interpret, report) into one "
                            "run folder; finished stages are skipped, interrupted ones resume.")
    p.add_argument("config", nargs="?", help="config file (.toml, .yaml); `saekit config --defaults` prints every field")
    run_flags(p)
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("config", help="print the demo config, or every field with its default and meaning")
    p.add_argument("--defaults", action="store_true", help="print every field, documented, with its default")
    p.set_defaults(func=cmd_config)

    p = commands.add_parser("train", help="train an SAE on an activation store (works under torchrun)",
                            description="Train one SAE on a store made by `saekit harvest`. Under `torchrun "
                            "--nproc-per-node N -m saekit train ...` it trains data-parallel.")
    p.add_argument("--activations", required=True, help="activation store folder (from `saekit harvest`)")
    p.add_argument("--out", required=True, help="output folder: checkpoint/, train_log.jsonl, sae/")
    add_dataclass_flags(p.add_argument_group("SAE"), SAESection, skip=("options",))  # type: ignore[arg-type]
    add_dataclass_flags(p.add_argument_group("training"), TrainConfig)  # type: ignore[arg-type]
    p.set_defaults(func=cmd_train)

    for name, text in (("evaluate", "evaluate a run's SAE inside the model on held-out text: metrics.json + table"),
                       ("interpret", "collect per-feature statistics of a run (top contexts, logit effects)"),
                       ("report", "write a run's HTML dashboard (collects feature statistics first if needed)")):
        p = commands.add_parser(name, help=text, description=text)
        p.add_argument("run", help="run folder (from `saekit run` or `saekit demo`)")
        p.add_argument("--force", action="store_true", help="redo the stage even if its output exists")
        p.set_defaults(func=cmd_stage)

    p = commands.add_parser("sweep", help="train several architectures and sparsities on a run's activations, compare them",
                            description="Train every architecture at several L0s on the activations of an existing "
                            "run, evaluate each inside the model, write a table and Pareto plots (L0 vs FVU, L0 vs "
                            "loss recovered) with each SAE's relative reconstruction bias.")
    p.add_argument("run", help="run folder whose store and held-out text the sweep uses")
    p.add_argument("--archs", nargs="+", default=["relu", "gated", "jumprelu", "topk", "batchtopk"])
    p.add_argument("--l0s", nargs="+", type=float, default=[16, 32, 64], help="target L0s (k for topk/batchtopk)")
    p.add_argument("--steps", type=int, default=None, help="training steps per SAE (default: the run's)")
    p.add_argument("--out", help="sweep folder (default: RUN/sweep)")
    p.set_defaults(func=cmd_sweep)

    p = commands.add_parser("compare", help="match the features of two SAEs; list those of A with no counterpart in B",
                            description="Features matched by decoder cosine similarity. E.g. an SAE trained on one "
                            "author's texts against one trained on a general corpus: A's unmatched features are "
                            "the author's own.")
    p.add_argument("a", help="run folder or SAE folder A")
    p.add_argument("b", help="run folder or SAE folder B")
    p.add_argument("--threshold", type=float, default=0.7, help="a feature has a counterpart when its best cosine is at least this")
    p.add_argument("--limit", type=int, default=30, help="unmatched features to print")
    p.add_argument("--json", help="also write the full comparison to this JSON file")
    p.set_defaults(func=cmd_compare)

    p = commands.add_parser("convert", help="convert an SAE to the exactly equivalent JumpReLU SAE (gated, batchtopk, relu)")
    p.add_argument("sae", help="SAE folder")
    p.add_argument("--to", default="jumprelu", choices=["jumprelu"])
    p.add_argument("--out", required=True, help="output SAE folder")
    p.set_defaults(func=cmd_convert)

    p = commands.add_parser("harvest", help="run a model over a corpus and store its activations at hook points",
                            description="Tokenise a corpus, run the model up to the last hooked layer only, and write "
                            "a sharded, checksummed, memory-mappable activation store. An interrupted harvest resumes. "
                            "Under torchrun each rank harvests its own slice.")
    p.add_argument("--model", default="smollm2", help="embedded name (smollm2, gemma3-270m), .gguf file, HF folder or Hub id")
    p.add_argument("--hook", nargs="+", default=["layers.15.resid_post"], help="hook point(s), e.g. layers.15.resid_post")
    p.add_argument("--corpus", default="default", help="text folder/file, .jsonl, .parquet, datasets folder; default: Shakespeare")
    p.add_argument("--text-field", help="field holding the text (JSON Lines, Parquet, datasets)")
    p.add_argument("--tokens", type=int, default=None, help="tokens of activations to store (default: the whole corpus)")
    p.add_argument("--context-size", type=int, default=128, help="tokens per context")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="stored dtype")
    p.add_argument("--model-dtype", default=None, choices=["bfloat16", "float32"], help="dtype the model runs in (default: bf16 where supported)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--batch-contexts", type=int, default=8, help="contexts per forward pass")
    p.add_argument("--out", required=True, help="store folder (one sub-folder per hook when several are given)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing finished store")
    p.set_defaults(func=cmd_harvest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .allocator import keep_freed_memory

    keep_freed_memory()  # now, before a command starts torch.distributed's threads
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("\n[saekit] interrupted. Run the same command again to continue where it stopped.", file=sys.stderr)
        return 130
    except (ConfigValueError, ValueError, FileExistsError, FileNotFoundError) as error:
        if os.environ.get("SAEKIT_DEBUG"):
            raise
        print(f"saekit {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
