"""The main job, end to end, in one run folder:

    RUN/saekit.json        what made the run: its resolved config and the fingerprints of
                           its corpus and model, and every file saekit wrote here
    RUN/config.json        the configuration as resolved (defaults and overrides applied)
    RUN/store/             activations at the hook point (data/harvest.py)
    RUN/train/             checkpoint and train_log.jsonl while training
    RUN/sae/               the trained SAE (cfg.json + sae_weights.safetensors)
    RUN/metrics.json       evaluation on held-out text, the SAE spliced into the model
    RUN/features/          per-feature statistics (top contexts, logit effects), and
                           steering.json: steered continuations of the top features
                           (the optional steer stage, [steer] in the config)
    RUN/report/index.html  the dashboard

The folder follows saekit's folder contract (_runtime/folder.py): locked while a run
writes it, refused (with the differences) when it holds a run with other settings, and
``--overwrite`` deletes only what saekit wrote there. Each stage writes its output
atomically and is skipped when that output is already there, so a run interrupted
anywhere (Ctrl-C or kill -9) continues where it stopped when the same command is run
again; harvest and training also resume mid-stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .._runtime.atomic import atomic_write_json
from .._runtime.errors import ConfigValueError, FolderError
from .._runtime.folder import OutputFolder
from .config import RunConfig

STAGES = ("harvest", "train", "evaluate", "interpret", "steer", "report")
OUTPUTS = {
    "harvest": "store",
    "train": "sae",
    "evaluate": "metrics.json",
    "interpret": "features",
    "steer": "features/steering.json",
    "report": "report",
}
KIND = "run"


def say(message: str) -> None:
    print(f"[saekit] {message}", flush=True)


@dataclass
class Run:
    """A run folder and its configuration, with the model and tokens loaded on first use."""

    folder: Path
    config: RunConfig
    output_folder: OutputFolder | None = None
    """The open folder contract, while a command writes the run."""
    verify: bool = True
    """Verify the store's checksums when training opens it."""

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
        from ..data.model import load_model

        m = self.config.model
        say(f"loading model {m.name} ...")
        return load_model(
            m.name, dtype=None if m.dtype == "auto" else m.dtype, device=None if m.device == "auto" else m.device
        )

    @cached_property
    def splits(self):
        """(train contexts, held-out contexts), the same every time for the same config."""
        from ..data.corpus import default_corpus_path, read_documents, tokenize

        c = self.config.corpus
        path = default_corpus_path() if c.path == "default" else Path(c.path).expanduser()
        documents = read_documents(path, text_field=c.text_field)
        # Enough contexts for the harvest, the held-out evaluation and the interpretation
        # scan, and no more: a large corpus is not tokenised whole for a small run.
        wanted = self.config.harvest.tokens + self.config.evaluate.tokens
        max_contexts = int(wanted / (1 - c.held_out_fraction) / (c.context_size - 1)) + 2
        corpus = tokenize(
            documents,
            self.model.tokenizer,
            c.context_size,
            pack=c.pack,
            exclude_special=c.exclude_special_tokens,
            max_contexts=max_contexts,
        )
        return corpus.split(c.held_out_fraction, seed=c.seed)

    # ---- stages ---------------------------------------------------------------------
    def stages(self) -> tuple[str, ...]:
        """The stages this run has: an SAE loaded from elsewhere is imported, not trained,
        and needs no store."""
        return ("train", *STAGES[2:]) if self.config.sae.load else STAGES

    def harvest(self) -> None:
        from ..data.harvest import harvest
        from ..data.pairs import write_pairs_file

        train_corpus, _ = self.splits
        h, m = self.config.harvest, self.config.model
        hooks: str | list[str] = m.hook if m.hook_out is None else [m.hook, m.hook_out]
        stores = harvest(
            self.model,
            train_corpus,
            hooks,
            self._output("store"),
            max_tokens=h.tokens,
            dtype=h.dtype,
            batch_contexts=h.batch_contexts,
            shard_tokens=h.shard_tokens,
            progress=True,
        )
        if m.hook_out is not None:  # a transcoder's pairs: two stores of aligned rows, and what they are
            input_hook, target_hook = list(stores)
            write_pairs_file(self.store_path, input_hook, target_hook)

    def train(self) -> None:
        if self.config.sae.load:
            return self.import_sae()
        from ..data.source import open_data
        from .recipes import train_sae

        store = open_data(self.store_path, verify=self.verify)
        m = self.config.model
        if self.output_folder is None:
            raise FolderError(f"{self.folder} must be opened for writing before training.")
        train_sae(
            self.folder,
            self.output_folder,
            self.config.sae,
            self.config.train,
            store,
            d_in=store.d_in,
            hook=m.hook,
            model=m.name,
            hook_out=m.hook_out,
            d_out=getattr(store, "d_out", None),
            loggers=self._loggers(),
        )

    def import_sae(self) -> None:
        """The SAE of ``sae.load``, checked against the run's model, saved as RUN/sae."""
        from ..formats import load

        sae = load(self.config.sae.load)
        hook = self.config.model.hook
        if sae.cfg.hook is not None and sae.cfg.hook != hook:
            raise ConfigValueError(
                f"sae.load: the SAE reads {sae.cfg.hook}, but the run's model.hook is {hook}; "
                f'set model.hook = "{sae.cfg.hook}" (--model.hook {sae.cfg.hook}).'
            )
        if sae.d_in != self.model.d_model:
            raise ConfigValueError(
                f"sae.load: the SAE reads d_in={sae.d_in}, but {self.model.name} has "
                f"d_model={self.model.d_model}; load it with the model it was trained on."
            )
        sae.cfg.hook = hook
        sae.cfg.model = sae.cfg.model or self.config.model.name
        sae.save(self._output("sae"), overwrite=(self.folder / "sae").exists())

    def evaluate(self) -> None:
        from ..evaluation.splice import evaluate_in_model, write_metrics

        _, held_out = self.splits
        sae = self.load_sae()
        e = self.config.evaluate
        metrics = evaluate_in_model(
            sae, self.model, held_out, batch_contexts=e.batch_contexts, max_tokens=e.tokens, progress=True
        )
        write_metrics(self._output("metrics.json"), metrics)

    def interpret(self) -> None:
        from ..interpret import collect_feature_stats

        train_corpus, _ = self.splits
        i = self.config.interpret
        stats = collect_feature_stats(
            self.load_sae(), self.model, train_corpus, n_top=i.n_top, max_tokens=i.tokens, progress=True
        )
        stats.save(self._output("features"))

    def steer(self) -> None:
        """Steered continuations of the top features (interpret/steering_table.py)."""
        from ..interpret import FeatureStats
        from ..interpret.steering_table import steering_table, top_features

        s = self.config.steer
        stats = FeatureStats.load(self.features_path)
        table = steering_table(
            self.model,
            self.load_sae(),
            stats,
            features=top_features(stats, s.features),
            prompts=s.prompts,
            strengths=s.strengths,
            max_new_tokens=s.max_new_tokens,
        )
        atomic_write_json(self._output(OUTPUTS["steer"]), table)

    def steering_current(self) -> bool:
        """Whether steering.json holds what today's [steer] settings would make (it records
        its prompts, strengths, length and features; other settings redo it)."""
        import json

        from ..interpret import FeatureStats
        from ..interpret.steering_table import matches, top_features

        path = self.folder / OUTPUTS["steer"]
        if not path.is_file() or not (self.features_path / "feature_stats.safetensors").is_file():
            return False
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        s, hook = self.config.steer, self.config.model.hook_out or self.config.model.hook
        features = top_features(FeatureStats.load(self.features_path), s.features)
        return matches(
            saved,
            hook=hook,
            features=features,
            prompts=s.prompts,
            strengths=s.strengths,
            max_new_tokens=s.max_new_tokens,
        )

    def report(self) -> None:
        from ..evaluation.splice import read_metrics
        from ..interpret import FeatureStats
        from ..report import write_report

        metrics = read_metrics(self.metrics_path)
        stats = FeatureStats.load(self.features_path)
        write_report(
            self._output("report"),
            self.load_sae(),
            stats,
            metrics,
            self.model.tokenizer,
            n_features=self.config.interpret.n_features,
            loaded=self.model,
        )

    # ---- helpers --------------------------------------------------------------------
    def _output(self, name: str) -> Path:
        if self.output_folder is None:
            raise FolderError(f"{self.folder} must be opened for writing first.")
        return self.output_folder.output(name)

    def finished(self, stage: str) -> None:
        if self.output_folder is not None:
            self.output_folder.finished(OUTPUTS[stage])

    def load_sae(self):
        from ..formats import load as load_sae

        return load_sae(self.sae_path)

    def done(self, stage: str) -> bool:
        """A stage is done when saekit recorded its output as finished (outputs are
        written atomically, so a recorded one is complete)."""
        if stage == "steer" and not self.steering_current():
            return False
        if self.output_folder is not None:
            return self.output_folder.has(OUTPUTS[stage])
        return (self.folder / OUTPUTS[stage]).exists()

    def wanted(self, stage: str) -> bool:
        """Whether the config asks for this stage (the steer stage can be turned off)."""
        return stage != "steer" or self.config.steer.enabled

    def _loggers(self) -> list[Callable]:
        from ..training.loggers import tensorboard_logger, wandb_logger

        loggers = []
        if self.config.logging.tensorboard:
            loggers.append(tensorboard_logger(self._output("tensorboard")))
        if self.config.logging.wandb:
            loggers.append(wandb_logger(self.config.logging.wandb_project, self.config.to_dict(), self.folder))
        return loggers


def run_identity(config: RunConfig, d_in: int) -> dict:
    """What a run's outputs depend on: its settings (training's "auto" values resolved for
    the model's width ``d_in``, so that a run made with other defaults is not reused) and
    the content of its corpus and model."""
    from ..data.corpus import corpus_fingerprint, default_corpus_path
    from ..data.model import model_fingerprint
    from .recipes import resolved_train

    path = default_corpus_path() if config.corpus.path == "default" else Path(config.corpus.path).expanduser()
    inputs = {"corpus": corpus_fingerprint(path), "model": model_fingerprint(config.model.name)}
    settings = config.identity()
    if config.sae.load:
        inputs["sae"] = sae_fingerprint(config.sae.load)
    else:
        settings["train"] = resolved_train(config.sae, config.train, d_in).identity()
    return {"config": settings, "inputs": inputs}


def normalize_identity(saved: dict) -> dict:
    """A run identity written by an earlier saekit, as today's config would write it. A
    training field it lacks was added later and trained at its value before
    (training/config.py ``ADDED_LATER``), not at today's default."""
    from ..training.config import ADDED_LATER

    config = dict(saved["config"])
    config["train"] = {**ADDED_LATER, **config.get("train", {})}
    return {**saved, "config": RunConfig.from_dict(config).identity()}


def sae_fingerprint(source: str) -> str:
    """The content of the SAE a run loads (a Hub source: its name, which pins nothing more)."""
    from .._runtime.folder import fingerprint_paths

    path = Path(source).expanduser()
    if source.startswith(("hf://", "saelens://")) or not path.is_dir():
        return source
    return fingerprint_paths([p for p in path.iterdir() if p.is_file()])


def prepare(folder: str | Path, config: RunConfig, *, overwrite: bool = False) -> Run:
    """Validate everything that can be checked before work starts, then open the run
    folder (locked, its identity checked; see the module docstring)."""
    from ..data.probe import model_width

    folder = Path(folder)
    d_in = model_width(config.model.name)
    config.check(d_in)
    output = OutputFolder(
        folder,
        kind=KIND,
        identity=run_identity(config, d_in),
        owns=("config.json", *OUTPUTS.values(), "train"),
        overwrite=overwrite,
        normalize=normalize_identity,
    )
    output.open()
    try:
        if not output.has("config.json"):
            atomic_write_json(output.output("config.json"), config.to_dict())
            output.finished("config.json")
    except BaseException:
        output.close()
        raise
    return Run(folder, config, output)


def open_run(folder: str | Path, *, write: bool) -> Run:
    """An existing run folder (for ``saekit evaluate/report/sweep``), opened for writing
    (locked, checked) when ``write``."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigValueError(
            f"{folder} is not a run folder (no config.json); make one with `saekit run` or `saekit demo`."
        )
    config = RunConfig.from_file(config_file)
    if not write:
        return Run(folder, config)
    from ..data.probe import model_width

    identity = run_identity(config, model_width(config.model.name))
    output = OutputFolder(folder, kind=KIND, identity=identity, normalize=normalize_identity)
    output.open()
    if not output.resumed:
        output.close()
        raise FolderError(
            f"{folder} holds a config.json but no record of the run saekit made there (saekit.json); "
            "run it again with `saekit run` into a new folder."
        )
    return Run(folder, config, output)


def run_pipeline(
    folder: str | Path,
    config: RunConfig,
    *,
    stages: tuple[str, ...] = STAGES,
    overwrite: bool = False,
    verify: bool = True,
) -> Run:
    run = prepare(folder, config, overwrite=overwrite)
    run.verify = verify
    try:
        run_stages(run, tuple(stage for stage in stages if stage in run.stages()))
    finally:
        run.output_folder.close()
    return run


def run_stages(run: Run, stages: tuple[str, ...], *, force: bool = False) -> None:
    for stage in stages:
        if not run.wanted(stage):
            say(f"{stage}: off in the config, skipped")
            continue
        if run.done(stage) and not force:
            say(f"{stage}: done already, skipped")
            continue
        started = time.perf_counter()
        say(f"{stage} ...")
        getattr(run, stage)()
        run.finished(stage)
        say(f"{stage}: finished in {time.perf_counter() - started:.0f} s")
