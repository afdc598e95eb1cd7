"""The commands about features: explain (written explanations, scored), steer, ablate and
contrast, with their flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import value_type


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
