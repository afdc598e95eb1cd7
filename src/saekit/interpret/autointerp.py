"""Explanations of a run's features, scored: ``explain_features`` (CLI: ``saekit explain``).

    records = explain_features("runs/demo", features=20, explainer="local:")
    records = explain_features("runs/demo", features=[3, 17], explainer="openai:http://127.0.0.1:8080")

For each feature: encode the run's activation store with its SAE (``collect_firings``),
cut the rows into windows and draw the examples (sampling.py: the top windows and
quantile samples for the explainer; *disjoint* held-out windows and random windows where
the feature never fires for the scorers), ask the explainer for one sentence
(explain.py), then score the sentence by detection and fuzzing (scoring.py).

Results go to ``RUN/features/explanations.jsonl``, one JSON object per feature, sorted by
feature, the whole file rewritten atomically after each batch of features. Each record
holds its ``settings``: a feature already explained with the same settings is skipped (so
an interrupted run resumes), one explained with other settings is refused unless
``overwrite`` (which rewrites that file only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .._runtime.checksums import sha256_file
from .._runtime.errors import ConfigValueError, DataError, UsageError
from .explain import explainer_messages, parse_explanation
from .llm import ChatModel, OpenAIChat, parse_explainer
from .records import EXPLANATIONS_FILE, difference, feature_list, read_explanations, write_explanations
from .sampling import split_windows, window_index
from .scoring import SCORERS, detection_samples, fuzzing_samples, score_replies, scorer_prompts


@dataclass
class ExplainConfig:
    """How examples are drawn and scored. Delphi's defaults are larger (32-token windows,
    40 explainer examples, 50 + 50 scored); these fit a CPU and a small model."""

    scorers: tuple[str, ...] = SCORERS
    """Which scorers to run: detection, fuzzing (none: explanations only)."""
    window: int = 24
    """Tokens per example window."""
    n_top: int = 8
    """Top-activating windows shown to the explainer."""
    n_quantiles: int = 5
    """Activation quantiles the other windows are cut into."""
    n_train_per_quantile: int = 2
    """Windows per quantile shown to the explainer (besides the top ones)."""
    n_test: int = 20
    """Held-out activating windows per scorer (disjoint from the explainer's)."""
    n_negatives: int = 20
    """Random non-activating windows per scorer."""
    per_prompt: int = 5
    """Examples per scorer prompt (Delphi: 5)."""
    threshold: float = 0.3
    """A token is marked active when f ≥ threshold · its window's maximum (Delphi: 0.3)."""
    tokens: int | None = 200_000
    """Store rows (tokens) scanned for examples; None: the whole store."""
    min_windows: int = 16
    """A feature active in fewer windows is skipped (Delphi skips below 200)."""
    explanation_tokens: int = 60
    """Most tokens the explainer may write."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.scorers = tuple(self.scorers)
        unknown = [s for s in self.scorers if s not in SCORERS]
        if unknown:
            raise ConfigValueError(
                f"--scorers: unknown scorer {unknown[0]!r}; choose from {', '.join(SCORERS)} (comma-separated).",
                field="scorers",
            )
        for name in ("window", "n_top", "n_quantiles", "n_test", "n_negatives", "per_prompt", "min_windows"):
            if getattr(self, name) < 1:
                raise ConfigValueError(f"{name} must be ≥ 1, got {getattr(self, name)}.", field=name)
        if not 0 < self.threshold <= 1:
            raise ConfigValueError(f"threshold must be in (0, 1], got {self.threshold}.", field="threshold")


def explain_features(
    run: str | Path,
    features: int | Sequence[int] | None = None,
    explainer: str | ChatModel = "local:",
    *,
    config: ExplainConfig | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    batch_features: int = 4,
    tokenizer=None,
) -> list[dict]:
    """Explain and score features of the run folder ``run``; returns their records.

    The scorers' held-out windows are disjoint from the windows the explainer saw (Delphi
    does not enforce this; saekit does), and the non-activating ones are windows on none
    of whose tokens the feature fires.

    ``features``: how many (chosen at random, seed 0, among the features that fire on at
    least ``min_windows`` tokens in the run's feature statistics) or which ids; None: 20.
    ``explainer``: ``local:[MODEL]``, ``openai:URL`` (with ``model``, ``api_key_env``), or
    any object with ``name`` and ``complete`` (llm.ChatModel). Features active in fewer
    than ``min_windows`` windows are skipped, and not written. ``tokenizer`` (anything with
    ``decode([id])``) turns the store's token ids into text; default: the run model's.
    """
    config = config or ExplainConfig()
    run = Path(run)
    stats, store, sae = _open_run(run)
    ids = _choose(features, stats, config)
    chat = parse_explainer(explainer, model=model, api_key_env=api_key_env) if isinstance(explainer, str) else explainer
    if isinstance(chat, OpenAIChat):
        chat.check()  # an unreachable server fails now, before any work
    path = run / "features" / EXPLANATIONS_FILE
    settings = {
        "explainer": chat.name,
        **asdict(config),
        "scorers": list(config.scorers),
        "sae": sha256_file(run / "sae" / "sae_weights.safetensors"),
        "store": store.manifest.get("corpus_fingerprint"),
    }
    records = read_explanations(path)
    other = [f for f in ids if f in records and records[f].get("settings") != settings]
    if other and not overwrite:
        changed = difference(records[other[0]].get("settings"), settings)
        raise UsageError(
            f"{path}: feature{'s' if len(other) > 1 else ''} {feature_list(other)} "
            f"{'were' if len(other) > 1 else 'was'} explained with other settings ({changed}); "
            "pass --overwrite to replace them, or use the same settings."
        )
    pending = [f for f in ids if f not in records or f in other]
    if not pending:
        return [records[f] for f in ids if f in records]
    from .collect import collect_firings

    firings = collect_firings(sae, store.activations, pending, max_tokens=config.tokens, progress=progress)
    n_rows = len(store) if config.tokens is None else min(len(store), config.tokens)
    index = window_index(store.doc_ids[:n_rows].numpy(), store.positions[:n_rows].numpy(), config.window)
    token_ids = store.token_ids[:n_rows].numpy()
    text = _TokenText(store.manifest["model"], tokenizer)
    from tqdm.auto import tqdm

    skipped = []
    with tqdm(total=len(pending), desc="explaining", unit="feature", disable=not progress) as bar:
        for begin in range(0, len(pending), batch_features):
            batch = pending[begin : begin + batch_features]
            work = []
            for f in batch:
                rows, values = (t.numpy() for t in firings[f])
                level = index.levels(rows, values)
                if int((level > 0).sum()) < config.min_windows:
                    skipped.append(f)
                    continue
                split = split_windows(
                    level,
                    n_top=config.n_top,
                    n_quantiles=config.n_quantiles,
                    n_train_per_quantile=config.n_train_per_quantile,
                    n_test=config.n_test,
                    n_negatives=config.n_negatives,
                    seed=config.seed + f,
                )

                def window(w, rows=rows, values=values):
                    return text(token_ids[index.starts[w] : index.ends[w]]), index.activations(w, rows, values)

                work.append((f, split, window, float(values.max()), int((level > 0).sum())))
            for record in _explain_batch(chat, work, config, settings):
                records[record["feature"]] = record
            write_explanations(path, records)
            bar.update(len(batch))
    if skipped:
        print(f"[saekit] skipped feature(s) {feature_list(skipped)}: active in fewer than {config.min_windows} windows")
    return [records[f] for f in ids if f in records]


def _explain_batch(chat: ChatModel, work, config: ExplainConfig, settings: dict) -> list[dict]:
    """One explainer call for the batch's features, then one call for all their scorer prompts."""
    prompts = [
        explainer_messages([window(w) for w in split.train], peak, config.threshold)
        for _, split, window, peak, _ in work
    ]
    replies = chat.complete(prompts, max_tokens=config.explanation_tokens) if prompts else []
    jobs, conversations = [], []
    for (f, split, window, _, _), reply in zip(work, replies):
        explanation, parsed = parse_explanation(reply)
        positives = [window(w) for w in split.test]
        shown = [window(w) for w in split.negatives]
        if any(acts.any() for _, acts in shown):  # split_windows promises this; check it where it matters
            raise RuntimeError(f"feature {f}: a 'non-activating' window fires; this is a bug in saekit.")
        negatives = [tokens for tokens, _ in shown]
        rng = np.random.default_rng(config.seed + f)
        for kind in config.scorers:
            samples = (
                detection_samples([t for t, _ in positives], negatives)
                if kind == "detection"
                else fuzzing_samples(positives, negatives, rng, config.threshold)
            )
            batches, messages = scorer_prompts(
                kind, explanation, samples, per_prompt=config.per_prompt, seed=config.seed + f
            )
            jobs.append((f, kind, samples, batches, len(conversations), len(messages)))
            conversations.extend(messages)
        jobs.append((f, "explanation", explanation, parsed, 0, 0))
    answers = chat.complete(conversations, max_tokens=6 + 3 * config.per_prompt, stop=["]"]) if conversations else []
    out: dict[int, dict] = {}
    for f, kind, a, b, start, count in jobs:
        record = out.setdefault(f, {"feature": f, "explainer": chat.name, **{k: None for k in SCORERS}})
        if kind == "explanation":
            record.update(explanation=a, explanation_parsed=b)
            continue
        score = score_replies(a, b, answers[start : start + count])
        record.update({kind: score.balanced_accuracy, f"n_{kind}": score.n, f"{kind}_unparsed": score.n_unparsed})
    for f, _, _, peak, n_active in work:
        out[f].update(n_active_windows=n_active, max_activation=peak, settings=settings)
    return [_ordered(out[f]) for f, *_ in work]


def _ordered(record: dict) -> dict:
    first = ("feature", "explanation", "explainer", "detection", "fuzzing", "n_detection", "n_fuzzing")
    return {**{k: record.get(k) for k in first}, **{k: v for k, v in record.items() if k not in first}}


# ---- the run folder ---------------------------------------------------------------------------
def _open_run(run: Path):
    from ..data.store import open_store
    from ..formats import load as load_sae
    from .stats import STATS_FILE, FeatureStats

    if not (run / "sae").is_dir() or not (run / "config.json").is_file():
        raise UsageError(
            f"{run} is not a run folder (no sae/ or config.json); make one with `saekit run` or `saekit demo`."
        )
    stats_file = run / "features" / STATS_FILE
    if not stats_file.is_file():
        raise UsageError(
            f"{run} has no feature statistics ({stats_file} is missing); make them with `saekit interpret {run}`."
        )
    try:
        stats = FeatureStats.load(stats_file)
    except (ValueError, OSError) as error:
        raise DataError(f"{stats_file}: {error}; make them again with `saekit interpret {run} --force`.") from None
    if not (run / "store" / "manifest.json").is_file():
        raise UsageError(
            f"{run} has no activation store (store/); `saekit explain` draws its examples from a run's store, so use "
            "a run that harvested one (`saekit run`, `saekit demo`)."
        )
    store = open_store(run / "store", verify=False)
    sae = load_sae(run / "sae")
    if sae.d_sae != stats.d_sae:
        raise DataError(
            f"{run}: the SAE has {sae.d_sae} features but the feature statistics {stats.d_sae}; "
            f"collect them again with `saekit interpret {run} --force`."
        )
    return stats, store, sae


def _choose(features, stats, config: ExplainConfig) -> list[int]:
    d_sae = stats.d_sae
    if features is None or isinstance(features, (int, np.integer)) and not isinstance(features, bool):
        n = 20 if features is None else int(features)
        if n < 1:
            raise ConfigValueError(f"--features must be ≥ 1, got {n}.", field="features")
        alive = np.flatnonzero(stats.count.numpy() >= config.min_windows)
        return sorted(np.random.default_rng(0).permutation(alive)[:n].tolist())
    ids = sorted(set(int(f) for f in features))
    bad = [f for f in ids if not 0 <= f < d_sae]
    if bad:
        raise ConfigValueError(
            f"--ids: feature {bad[0]} is out of range; this SAE has {d_sae} features (ids 0 to {d_sae - 1}).",
            field="ids",
        )
    if not ids:
        raise ConfigValueError("--ids names no feature; pass ids like --ids 3,17,42.", field="ids")
    return ids


class _TokenText:
    """Token ids → their text, each id decoded once, with the run model's tokenizer."""

    def __init__(self, spec: str, tokenizer=None) -> None:
        from transformers import AutoTokenizer

        from ..data.model import model_path

        path = None if tokenizer is not None else model_path(spec)
        if tokenizer is not None:
            self.tokenizer = tokenizer
        elif path is None:
            self.tokenizer = AutoTokenizer.from_pretrained(spec)
        elif path.suffix == ".gguf":
            self.tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.cache: dict[int, str] = {}

    def __call__(self, ids) -> list[str]:
        from .explain import clean_token

        out = []
        for i in ids.tolist():
            if i not in self.cache:
                self.cache[i] = clean_token(self.tokenizer.decode([i]))
            out.append(self.cache[i])
        return out
