"""``saekit contrast RUN --corpus A --against B``: the features corpus A brings out more
than corpus B, ranked by the lower bound of their log-odds ratio (interpret/contrast.py),
each shown with its rate on both sides, its top tokens and its top contexts on A."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._runtime.atomic import atomic_write_json
from .._runtime.errors import FolderError
from .pipeline import open_run, say


def tokenized(run, spec: str, max_tokens: int, seed: int):
    """The texts of a corpus spec (data/corpus_select.py), tokenised as the run tokenised
    its own, as a random sample of whole contexts holding ``max_tokens`` tokens."""
    from ..data.corpus import tokenize
    from ..data.corpus_select import read_corpus
    from ..interpret.contrast_pass import sample_contexts

    c = run.config.corpus
    documents = read_corpus(spec, text_field=c.text_field)
    corpus = tokenize(
        documents, run.model.tokenizer, c.context_size, pack=c.pack, exclude_special=c.exclude_special_tokens
    )
    return sample_contexts(corpus, max_tokens, seed=seed)


def window_text(tokens: list[int], before: int, decode, mark: tuple[str, str] = ("«", "»"), skip=()) -> str:
    """Window token ids (−1 outside the context) as one line, the token at ``before``
    marked, line breaks shown as ⏎ and the ids in ``skip`` (special tokens) left out."""
    out = []
    for i, token in enumerate(tokens):
        if token < 0 or (token in skip and i != before):
            continue
        text = decode(token).replace("\n", "⏎")
        out.append(f"{mark[0]}{text}{mark[1]}" if i == before else text)
    return " ".join(part for part in "".join(out).split(" ") if part)


def run_contrast(
    run_folder: str,
    corpus_a: str,
    corpus_b: str,
    *,
    tokens: int,
    top: int,
    n_contexts: int = 2,
    json_path: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    from ..interpret.contrast_pass import contrast_corpora
    from ..interpret.labels import token_decoder, top_tokens

    if json_path and Path(json_path).exists() and not overwrite:
        raise FolderError(f"--json {json_path} already exists; choose another file, or add --overwrite to replace it.")
    run = open_run(run_folder, write=False)
    sae = run.load_sae()
    a = tokenized(run, corpus_a, tokens, seed)
    b = tokenized(run, corpus_b, tokens, seed)
    say(f"A = {corpus_a}: {a.n_tokens:,} tokens; B = {corpus_b}: {b.n_tokens:,} tokens")
    ranking, stats_a = contrast_corpora(sae, run.model, a, b, n_top=max(8, n_contexts), alpha=alpha)
    decode = token_decoder(run.model.tokenizer)
    special = set(getattr(run.model.tokenizer, "all_special_ids", []))
    fired = ranking.order[ranking.count_a[ranking.order] > 0].tolist()
    rows = []
    for i, feature in enumerate(fired):
        row = ranking.row(feature) | {"top_tokens": top_tokens(stats_a.top, feature, decode)}
        if i < top:
            row["contexts_a"] = [
                window_text(e.tokens, stats_a.top.before, decode, skip=special)
                for e in stats_a.top.of(feature)[:n_contexts]
            ]
        rows.append(row)
    result = {
        "run": str(run_folder),
        "corpus_a": corpus_a,
        "corpus_b": corpus_b,
        "n_tokens_a": ranking.n_a,
        "n_tokens_b": ranking.n_b,
        "statistic": "smoothed log-odds ratio of firing on A vs B; lower_bound = log_odds - z*SE "
        "(Woolf SE with each side's quasi-binomial dispersion over contexts, additive prior per cell, "
        "one-sided Bonferroni over the features)",
        "prior": ranking.prior,
        "alpha": ranking.alpha,
        "z": ranking.z,
        "n_specific": int(len(ranking.specific)),
        "features": rows,
    }
    if json_path:
        atomic_write_json(Path(json_path), result)
    return result


def print_contrast(result: dict[str, Any], *, top: int) -> None:
    print(
        f"A: {result['corpus_a']} ({result['n_tokens_a']:,} tokens)   B: {result['corpus_b']} "
        f"({result['n_tokens_b']:,} tokens)"
    )
    print(
        f"{result['n_specific']} features fire more on A than on B at family-wise level {result['alpha']} "
        f"(lower bound of the log-odds ratio > 0, z = {result['z']:.2f}); the top {top} by that bound:"
    )
    print(f"{'feature':>8} {'A /1k':>7} {'B /1k':>7} {'log-odds':>9} {'bound':>7}  top tokens")
    for row in result["features"][:top]:
        tokens = " ".join(repr(t) for t in row["top_tokens"])
        star = "" if row["specific"] else "  (not significant)"
        print(
            f"{row['feature']:>8} {1000 * row['rate_a']:>7.2f} {1000 * row['rate_b']:>7.2f} "
            f"{row['log_odds']:>9.2f} {row['lower_bound']:>7.2f}  {tokens}{star}"
        )
        for context in row.get("contexts_a", []):
            print(f"{'':>10}A: {context}")
    if result["n_specific"] == 0:
        print("no feature is specific to A: its rates on A are within chance of those on B.")
