"""The command line: a thin layer over saekit's functions.

    saekit demo                         the main job on the embedded model and corpus
    saekit run CONFIG [--train.steps N ...]   the main job on your own config
    saekit harvest / train / evaluate / report / sweep / compare / convert / config
    saekit steer / ablate RUN --feature F ...       what a feature does to the output
    saekit contrast RUN --corpus A --against B      the features corpus A brings out more than B

This module builds the parser and runs a command; the commands themselves are in
commands.py (run folders, stores, SAEs) and feature_commands.py (explain, steer, ablate,
contrast). Flags for configuration fields are generated from the dataclasses that define
them (flags.py): each is parsed to the field's declared type when argparse reads it (1e-3
is a float, 0.9,0.999 a pair), and its help is the field's own documentation. Every
anticipated failure is one line and exit code 2 (``main``); anything else is reported as a
bug in saekit.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._runtime.errors import ConfigValueError, SaekitError
from .commands import (
    cmd_compare,
    cmd_config,
    cmd_convert,
    cmd_demo,
    cmd_export,
    cmd_harvest,
    cmd_run,
    cmd_stage,
    cmd_sweep,
    cmd_train,
)
from .feature_commands import add_explain_parser, add_feature_tool_parsers
from .flags import Parser, add_dataclass_flags, flag_message, join_negative_values, value_type

REPORT_BUGS = "https://github.com/saekit/saekit/issues"


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else list(argv)))
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
        message = flag_message(args, error) if isinstance(error, ConfigValueError) else str(error)
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
