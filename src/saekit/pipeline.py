"""The main job, end to end, in one run folder:

    RUN/config.json        the configuration as resolved (defaults and overrides applied)
    RUN/store/             activations at the hook point (data/harvest.py)
    RUN/train/             checkpoint and train_log.jsonl while training
    RUN/sae/               the trained SAE (cfg.json + sae_weights.safetensors)
    RUN/metrics.json       evaluation on held-out text, the SAE spliced into the model
    RUN/features/          per-feature statistics (top contexts, logit effects)
    RUN/report/index.html  the dashboard

Each stage writes its output atomically and is skipped when that output is already
there, so a run interrupted anywhere (Ctrl-C or kill -9) continues where it stopped when
the same command is run again; harvest and training also resume mid-stage.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

from .atomic import atomic_write_json
from .config import RunConfig
from .dataclass_io import ConfigValueError

STAGES = ("harvest", "train", "evaluate", "interpret", "report")


def say(message: str) -> None:
    print(f"[saekit] {message}", flush=True)


@dataclass
class Run:
    """A run folder and its configuration, with the model and tokens loaded on first use."""

    folder: Path
    config: RunConfig

    # ---- paths ----------------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return self.folder / "store"

    @property
    def sae_path(self) -> Path:
        return self.folder / "sae"

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.json"

    @property
    def features_path(self) -> Path:
        return self.folder / "features"

    @property
    def report_path(self) -> Path:
        return self.folder / "report" / "index.html"

    # ---- what stages share, loaded lazily -------------------------------------------
    @cached_property
    def model(self):
        from .data.model import load_model

        m = self.config.model
        say(f"loading model {m.name} ...")
        return load_model(m.name, dtype=None if m.dtype == "auto" else m.dtype,
                          device=None if m.device == "auto" else m.device)

    @cached_property
    def splits(self):
        """(train contexts, held-out contexts), the same every time for the same config."""
        from .data.corpus import default_corpus_path, read_documents, tokenize

        c = self.config.corpus
        path = default_corpus_path() if c.path == "default" else Path(c.path).expanduser()
        documents = read_documents(path, text_field=c.text_field)
        # Enough contexts for the harvest, the held-out evaluation and the interpretation
        # scan, and no more: a large corpus is not tokenised whole for a small run.
        wanted = self.config.harvest.tokens + self.config.evaluate.tokens
        max_contexts = int(wanted / (1 - c.held_out_fraction) / (c.context_size - 1)) + 2
        corpus = tokenize(documents, self.model.tokenizer, c.context_size, pack=c.pack,
                          exclude_special=c.exclude_special_tokens, max_contexts=max_contexts)
        return corpus.split(c.held_out_fraction, seed=c.seed)

    # ---- stages ---------------------------------------------------------------------
    def harvest(self) -> None:
        from .data.harvest import harvest

        train_corpus, _ = self.splits
        h = self.config.harvest
        harvest(self.model, train_corpus, self.config.model.hook, self.store_path, max_tokens=h.tokens,
                dtype=h.dtype, batch_contexts=h.batch_contexts, shard_tokens=h.shard_tokens, progress=True)

    def train(self) -> None:
        from . import sae as sae_module
        from .data.store import open_store
        from .fit_scale import fit_scale
        from .train import train

        store = open_store(self.store_path)
        section = self.config.sae
        sae = sae_module.create(section.arch, d_in=store.d_in, d_sae=section.width(store.d_in),
                                seed=self.config.train.seed, **section.sae_options())
        sae.cfg.hook, sae.cfg.model = self.config.model.hook, self.config.model.name
        result = train(sae, store, out=self.folder / "train", loggers=self._loggers(),
                       **_fields(self.config.train))
        if section.fit_scale:
            say("fitting the feature scale s (the feature-suppression fix) ...")
            fit_scale(result.sae, store, batch_size=self.config.train.batch_size)
        result.sae.save(self.sae_path)

    def evaluate(self) -> None:
        from .splice_eval import evaluate_in_model, write_metrics

        _, held_out = self.splits
        sae = self.load_sae()
        e = self.config.evaluate
        metrics = evaluate_in_model(sae, self.model, held_out, batch_contexts=e.batch_contexts,
                                    max_tokens=e.tokens, progress=True)
        write_metrics(self.metrics_path, metrics)

    def interpret(self) -> None:
        from .interpret import collect_feature_stats

        train_corpus, _ = self.splits
        i = self.config.interpret
        stats = collect_feature_stats(self.load_sae(), self.model, train_corpus, n_top=i.n_top,
                                      max_tokens=i.tokens, progress=True)
        stats.save(self.features_path)

    def report(self) -> None:
        from .interpret import FeatureStats
        from .report import write_report

        metrics = json.loads(self.metrics_path.read_text())
        stats = FeatureStats.load(self.features_path)
        write_report(self.report_path.parent, self.load_sae(), stats, metrics, self.model.tokenizer,
                     n_features=self.config.interpret.n_features)

    # ---- helpers --------------------------------------------------------------------
    def load_sae(self):
        from .sae.persistence import load_sae

        return load_sae(self.sae_path)

    def done(self, stage: str) -> bool:
        """A stage is done when its output exists: outputs are written atomically, so an
        existing one is complete."""
        if stage == "harvest":
            from .data.store import StoreError, open_store

            try:
                open_store(self.store_path)
                return True
            except (StoreError, FileNotFoundError, ValueError):
                return False
        output = {"train": self.sae_path, "evaluate": self.metrics_path, "interpret": self.features_path,
                  "report": self.report_path}[stage]
        return output.exists()

    def _loggers(self) -> list[Callable]:
        from .loggers import tensorboard_logger, wandb_logger

        loggers = []
        if self.config.logging.tensorboard:
            loggers.append(tensorboard_logger(self.folder / "tensorboard"))
        if self.config.logging.wandb:
            loggers.append(wandb_logger(self.config.logging.wandb_project, self.config.to_dict(), self.folder))
        return loggers


def _fields(obj) -> dict:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def prepare(folder: str | Path, config: RunConfig) -> Run:
    """Validate everything that can be checked before work starts and pin the config to
    the folder: a folder holding a run with another configuration is refused."""
    folder = Path(folder)
    from .probe import model_width

    d_in = model_width(config.model.name)
    config.sae.check(d_in)
    from .data.model import parse_hook

    try:
        parse_hook(config.model.hook)
    except ValueError as error:
        raise ConfigValueError(f"model.hook: {error}") from None
    saved = folder / "config.json"
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous != config.to_dict():
            changed = _differences(previous, config.to_dict())
            raise ConfigValueError(
                f"{folder} holds a run made with another configuration (differs in {', '.join(changed)}); "
                "run it with the same configuration to resume it, or choose a new run folder."
            )
    else:
        atomic_write_json(saved, config.to_dict())
    return Run(folder, config)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict) and key != "options":
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def run_pipeline(folder: str | Path, config: RunConfig, *, stages: tuple[str, ...] = STAGES) -> Run:
    run = prepare(folder, config)
    for stage in stages:
        if run.done(stage):
            say(f"{stage}: done already, skipped")
            continue
        started = time.perf_counter()
        say(f"{stage} ...")
        getattr(run, stage)()
        say(f"{stage}: finished in {time.perf_counter() - started:.0f} s")
    return run
