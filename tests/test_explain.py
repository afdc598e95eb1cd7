"""saekit explain: example sampling, answer parsing, the scoring maths, resume and refusal,
and bad input, on a toy run folder whose features are known exactly.

The toy run: store rows are 16 contexts × 32 tokens, token id = 100 + row (every window's
text is unique), and x: [rows, 8]. A ReLU SAE reads f_j = relu(x_j) for j < 3:

    feature 0 fires on the rows r with r % 3 == 0 in the first half of each context
              (activation 0.5 + r / rows, so quantiles differ)
    feature 1 fires on the rows r with r % 37 == 5 only (same activations)
    feature 2 never fires

A fake tokenizer writes token id t as " w<t>". The fake chat models answer from the truth
(which rows fire), so the balanced accuracies they earn are known: truth 1, always yes 0.5,
inverse 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit
from saekit.app.cli import main
from saekit.data.store import StoreWriter
from saekit.interpret import ExampleHeap, FeatureStats
from saekit.interpret.autointerp import ExplainConfig, explain_features
from saekit.interpret.explain import active_marks, highlight, levels, parse_explanation
from saekit.interpret.records import read_explanations
from saekit.interpret.sampling import split_windows, window_index
from saekit.interpret.scoring import Sample, balanced_accuracy, parse_answer, score_replies, scorer_prompts

CONTEXTS, T, D_IN = 16, 32, 8
ROWS = CONTEXTS * T


def fires(feature: int, row: int) -> bool:
    return (feature == 0 and row % 3 == 0 and row % T < T // 2) or (feature == 1 and row % 37 == 5)


def toy_x() -> torch.Tensor:
    x = torch.full((ROWS, D_IN), -1.0)
    for r in range(ROWS):
        for j in (0, 1):
            if fires(j, r):
                x[r, j] = 0.5 + r / ROWS
    return x


class WordTokenizer:
    def decode(self, ids):
        return "".join(f" w{i}" for i in ids)


def make_run(path: Path, model: str = "toy") -> Path:
    """A run folder (store, SAE, feature statistics); ``model`` names the tokenizer of its
    token ids ("smollm2": the real one, ids 100 + row are words of its vocabulary)."""
    header = {
        "model": model,
        "model_fingerprint": "toy",
        "hook": "layers.0.resid_post",
        "dtype": "float32",
        "d_in": D_IN,
        "context_size": T,
        "corpus_fingerprint": "toy-corpus",
        "n_tokens": ROWS,
        "shard_contexts": 8,
        "n_shards": 2,
    }
    writer = StoreWriter(path / "store", header)
    x = toy_x()
    rows = np.arange(ROWS)
    meta = np.stack([100 + rows, np.zeros(ROWS, dtype=int), rows % T + 1], axis=1).astype(np.int32)
    half = ROWS // 2
    writer.write_shard(0, x[:half], meta[:half], (0, 8))
    writer.write_shard(1, x[half:], meta[half:], (8, 16))
    writer.finish()
    sae = saekit.create("relu", d_in=D_IN, d_sae=3, l1_coefficient=0.0)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[0, 0] = sae.W_enc[1, 1] = sae.W_enc[2, 2] = 1.0
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -100.0]))
    sae.cfg.hook = "layers.0.resid_post"
    sae.save(path / "sae")
    f = sae.encode(x)
    FeatureStats(
        n_tokens=ROWS,
        count=(f > 0).sum(0),
        activation_sum=f.sum(0).double(),
        max_activation=f.amax(0),
        hist_edges=torch.logspace(-2, 1, 4, dtype=torch.float64),
        hist_counts=torch.zeros(3, 3, dtype=torch.int64),
        l0_counts=torch.zeros(4, dtype=torch.int64),
        top=ExampleHeap(3, 1, 0, 0).result(),
        random=ExampleHeap(3, 1, 0, 0).result(),
        logits=None,
    ).save(path / "features")
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


SMALL = dict(window=8, n_top=3, n_quantiles=3, n_train_per_quantile=2, n_test=10, n_negatives=10, min_windows=2)
ROW_OF = re.compile(r"w(\d+)")


def example_lines(conversation) -> list[str]:
    body = conversation[-1]["content"]
    return [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("Example ")]


class FakeChat:
    """Answers from the truth: explainer prompts get a fixed sentence; for each scorer
    example, `rule(feature fires, example text)` gives 1 or 0."""

    def __init__(self, feature: int, rule, name: str = "fake") -> None:
        self.feature, self.rule, self.name = feature, rule, name
        self.explainer_examples: list[str] = []
        self.scorer_examples: list[str] = []
        self.calls = 0

    def truth(self, text: str) -> bool:
        marked = re.findall(r"<<(.*?)>>", text)
        if marked:  # fuzzing: every marked token fires
            return all(fires(self.feature, int(t) - 100) for m in marked for t in ROW_OF.findall(m))
        return any(fires(self.feature, int(t) - 100) for t in ROW_OF.findall(text))

    def complete(self, conversations, *, max_tokens, stop=()):
        self.calls += 1
        replies = []
        for c in conversations:
            lines = example_lines(c)
            if "[EXPLANATION]" in c[0]["content"]:
                self.explainer_examples += lines
                replies.append("[EXPLANATION]: every third word")
                continue
            self.scorer_examples += lines
            replies.append("[" + ",".join(str(int(self.rule(self.truth(t)))) for t in lines) + "]")
        return replies


# ---- the scoring maths ----------------------------------------------------------------------------
def test_balanced_accuracy_by_definition():
    truth = [True] * 3 + [False] * 7
    assert balanced_accuracy(truth, truth) == 1.0
    assert balanced_accuracy(truth, [True] * 10) == 0.5
    assert balanced_accuracy(truth, [not t for t in truth]) == 0.0
    assert balanced_accuracy(truth, [None] * 10) == 0.0  # unreadable counts as wrong
    predicted = [True, True, False] + [False] * 6 + [True]
    assert balanced_accuracy(truth, predicted) == pytest.approx((2 / 3 + 6 / 7) / 2)
    assert balanced_accuracy([True, True], [True, True]) is None


@pytest.mark.parametrize("rule, expected", [(lambda t: t, 1.0), (lambda t: True, 0.5), (lambda t: not t, 0.0)])
def test_fake_models_earn_their_known_scores(run, rule, expected):
    records = explain_features(
        run, [0, 1], FakeChat(0, rule), config=ExplainConfig(**SMALL), progress=False, tokenizer=WordTokenizer()
    )
    record = records[0]
    assert record["feature"] == 0 and record["explanation"] == "every third word"
    assert record["detection"] == expected and record["fuzzing"] == expected
    assert record["n_detection"] == record["n_fuzzing"] == 20
    assert record["detection_unparsed"] == record["fuzzing_unparsed"] == 0


def test_unreadable_answers_count_wrong_and_are_counted(run):
    class Rambler(FakeChat):
        def complete(self, conversations, *, max_tokens, stop=()):
            return ["Sure! Here is some code: def f(x): return x"] * len(conversations)

    [record] = explain_features(
        run, [0], Rambler(0, None), config=ExplainConfig(**SMALL), progress=False, tokenizer=WordTokenizer()
    )
    assert record["detection"] == 0.0 and record["detection_unparsed"] == 20
    assert record["explanation_parsed"] is False


def test_score_replies_reads_each_prompt_in_its_own_order():
    samples = [Sample(f"t{i}", i % 2 == 0) for i in range(10)]
    batches, conversations = scorer_prompts("detection", "x", samples, per_prompt=4, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(10)) and [len(b) for b in batches] == [4, 4, 2]
    assert "Example 3: t" in conversations[0][-1]["content"]
    replies = ["[" + ",".join("1" if samples[i].activating else "0" for i in b) + "]" for b in batches]
    assert score_replies(samples, batches, replies).balanced_accuracy == 1.0
    replies[2] = "no idea"
    score = score_replies(samples, batches, replies)
    assert score.n_unparsed == 2 and score.balanced_accuracy < 1.0


# ---- answer parsing -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, expected",
    [
        ("[1,0,0,1,1]", [1, 0, 0, 1, 1]),
        ("Answer: [1, 0, 0, 1, 1].", [1, 0, 0, 1, 1]),
        ("['1','0','0','1','1']", [1, 0, 0, 1, 1]),
        ("[True, False, False, True, True]", [1, 0, 0, 1, 1]),
        ("[1,0] hmm [1,0,0,1,1]", [1, 0, 0, 1, 1]),
        ("Example 0: 1\nExample 1: 0\nExample 2: 0\nExample 3: 1\nExample 4: yes", [1, 0, 0, 1, 1]),
        ("1 0 0 1 1", [1, 0, 0, 1, 1]),
        ("[1,0,0,1]", None),
        ("[1,0,0,1,1", [1, 0, 0, 1, 1]),  # generation stopped at "]"
        ("[1,0,0,1,1,2,3,4,5,6", [1, 0, 0, 1, 1]),  # a small model counting on
        ("[1,0,0", None),
        ("[1,0,0,1,1,1]", None),
        ("[1,0,2,1,1]", None),
        ("def find_x_y(x, y): return 1", None),
        ("", None),
        ("1 0 0 1 1 because 7", None),
    ],
)
def test_parse_answer(reply, expected):
    got = parse_answer(reply, 5)
    assert (got if got is None else [int(v) for v in got]) == expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Let me see.\n[EXPLANATION]: Numbers of things.\n", ("Numbers of things.", True)),
        ("[explanation]:   the word <<king>>", ("the word king", True)),
        ("Explanation: names of places", ("names of places", False)),
        ("   \n", ("Explanation could not be parsed.", False)),
    ],
)
def test_parse_explanation(reply, expected):
    assert parse_explanation(reply) == expected


def test_marks_and_levels_follow_delphi():
    tokens, acts = ["a", " b", " c", " d"], [0.0, 2.0, 0.7, 0.5]
    marks = active_marks(acts)
    assert marks == [False, True, True, False]  # 0.7 ≥ 0.3·2, 0.5 < 0.6
    assert highlight(tokens, marks) == "a <<b c>> d"
    assert levels(acts, 4.0) == [0, 5, 2, 2]


# ---- example sampling -----------------------------------------------------------------------------
def test_windows_never_cross_contexts_or_documents():
    positions = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 6, 7])
    docs = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    index = window_index(docs, positions, 3, min_length=2)
    assert list(zip(index.starts.tolist(), index.ends.tolist())) == [(0, 3), (3, 5), (5, 8), (8, 11)]
    assert index.of_rows(np.array([0, 4, 11])).tolist() == [0, 1, -1]


def test_samples_are_disjoint_and_negatives_never_fire():
    rng = np.random.default_rng(1)
    level = np.where(rng.random(1000) < 0.3, rng.random(1000) + 0.01, 0.0)
    split = split_windows(level, n_top=5, n_quantiles=4, n_train_per_quantile=3, n_test=40, n_negatives=50, seed=0)
    train, test, negatives = set(split.train), set(split.test), set(split.negatives)
    assert len(train) == 5 + 12 and len(test) == 40 and len(negatives) == 50
    assert not train & test and not (train | test) & negatives
    top = np.argsort(-level, kind="stable")[:5].tolist()
    assert split.train[:5] == top and split.train_quantile[:5] == [0] * 5
    assert set(split.test_quantile) == {1, 2, 3, 4} and all(level[w] > 0 for w in test)
    assert all(level[w] == 0 for w in negatives)


def test_explainer_and_scorer_examples_are_disjoint_windows(run):
    chat = FakeChat(0, lambda t: t)
    explain_features(run, [0], chat, config=ExplainConfig(**SMALL), progress=False, tokenizer=WordTokenizer())

    def rows(lines):
        return [frozenset(int(t) - 100 for t in ROW_OF.findall(line)) for line in lines]

    shown, scored = rows(chat.explainer_examples), rows(chat.scorer_examples)
    assert len(shown) == 3 + 6 and len(scored) == 2 * 20
    assert not set().union(*shown) & set().union(*scored)  # no token of a held-out window was shown
    negatives = [r for r in set(scored) if not any(fires(0, row) for row in r)]
    assert len(negatives) == 10  # the non-activating windows, checked against the truth


# ---- resume and refusal ---------------------------------------------------------------------------
def test_resume_skips_what_is_done_and_refuses_other_settings(run):
    config = ExplainConfig(**SMALL)
    first = FakeChat(0, lambda t: t)
    explain_features(run, [0], first, config=config, progress=False, tokenizer=WordTokenizer())
    again = FakeChat(0, lambda t: t)
    explain_features(run, [0, 1], again, config=config, progress=False, tokenizer=WordTokenizer())
    assert again.calls == 2  # one explainer call, one scorer call: for feature 1 only
    path = run / "features" / "explanations.jsonl"
    assert sorted(read_explanations(path)) == [0, 1]
    before = path.read_text()
    other = ExplainConfig(**{**SMALL, "n_test": 6})
    with pytest.raises(saekit._runtime.errors.UsageError, match="other settings.*n_test: 10 → 6.*--overwrite"):
        explain_features(run, [1], FakeChat(1, lambda t: t), config=other, progress=False, tokenizer=WordTokenizer())
    assert path.read_text() == before
    explain_features(
        run, [1], FakeChat(1, lambda t: t), config=other, overwrite=True, progress=False, tokenizer=WordTokenizer()
    )
    records = read_explanations(path)
    assert records[1]["settings"]["n_test"] == 6 and records[0] == json.loads(before.splitlines()[0])


def test_an_interrupted_run_keeps_finished_batches(run):
    class Interrupted(FakeChat):
        def complete(self, conversations, *, max_tokens, stop=()):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().complete(conversations, max_tokens=max_tokens, stop=stop)

    config = ExplainConfig(**SMALL)
    with pytest.raises(KeyboardInterrupt):
        explain_features(
            run,
            [0, 1],
            Interrupted(0, lambda t: t),
            config=config,
            batch_features=1,
            progress=False,
            tokenizer=WordTokenizer(),
        )
    path = run / "features" / "explanations.jsonl"
    assert sorted(read_explanations(path)) == [0]
    rest = FakeChat(0, lambda t: t)
    explain_features(run, [0, 1], rest, config=config, batch_features=1, progress=False, tokenizer=WordTokenizer())
    assert rest.calls == 2 and sorted(read_explanations(path)) == [0, 1]


def test_a_file_saekit_did_not_write_is_never_overwritten(run):
    path = run / "features" / "explanations.jsonl"
    path.write_text("my notes\n")
    with pytest.raises(saekit._runtime.errors.DataError, match="not a saekit explanation record"):
        explain_features(run, [0], FakeChat(0, bool), overwrite=True, progress=False, tokenizer=WordTokenizer())
    assert path.read_text() == "my notes\n"


def test_features_too_quiet_are_skipped_and_not_written(run, capsys):
    records = explain_features(
        run,
        [1, 2],
        FakeChat(1, bool),
        config=ExplainConfig(**{**SMALL, "min_windows": 50}),
        progress=False,
        tokenizer=WordTokenizer(),
    )
    assert records == [] and "skipped feature(s) 1, 2" in capsys.readouterr().out


# ---- bad input: one line, exit 2 ------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_explainer(run, capsys):
    line = run_cli(capsys, "explain", run, "--ids", "0", "--explainer", "gpt4")
    assert "--explainer must be local:MODEL" in line and "openai:URL" in line


def test_unreachable_url(run, capsys):
    line = run_cli(capsys, "explain", run, "--ids", "0", "--explainer", "openai:http://127.0.0.1:9")
    assert "cannot reach the explainer at http://127.0.0.1:9/v1/chat/completions" in line


def test_feature_ids_out_of_range(run, capsys):
    line = run_cli(capsys, "explain", run, "--ids", "1,3", "--explainer", "openai:http://127.0.0.1:9")
    assert "feature 3 is out of range" in line and "3 features (ids 0 to 2)" in line
    assert "--ids" in run_cli(capsys, "explain", run, "--ids", "one")


def test_run_without_feature_stats(run, capsys):
    (run / "features" / "feature_stats.safetensors").unlink()
    line = run_cli(capsys, "explain", run, "--features", "2")
    assert "no feature statistics" in line and "saekit interpret" in line


def test_not_a_run_folder_and_bad_scorer(tmp_path, run, capsys):
    assert "not a run folder" in run_cli(capsys, "explain", tmp_path)
    assert "unknown scorer 'simulation'" in run_cli(capsys, "explain", run, "--scorers", "simulation")


def test_missing_api_key_variable(run, capsys, monkeypatch):
    monkeypatch.delenv("SAEKIT_NO_SUCH_KEY", raising=False)
    line = run_cli(
        capsys,
        "explain",
        run,
        "--ids",
        "0",
        "--explainer",
        "openai:http://127.0.0.1:9",
        "--api-key-env",
        "SAEKIT_NO_SUCH_KEY",
    )
    assert "SAEKIT_NO_SUCH_KEY" in line and "not set" in line


# ---- the pieces under explain_features --------------------------------------------------------------
def test_collect_firings_matches_a_plain_encoding():
    from saekit.interpret.collect import collect_firings

    sae = saekit.create("relu", d_in=D_IN, d_sae=5, l1_coefficient=0.0, seed=1)
    x = torch.randn(300, D_IN, generator=torch.Generator().manual_seed(2))
    got = collect_firings(sae, x, [4, 1], batch_rows=64, progress=False)
    f = sae.encode(x).detach()
    for j in (4, 1):
        rows = (f[:, j] > 0).nonzero().flatten()
        assert torch.equal(got[j][0], rows) and torch.allclose(got[j][1], f[rows, j])
    assert collect_firings(sae, x, [1], max_tokens=100, progress=False)[1][0].max() < 100


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080/",
        "http://127.0.0.1:8080/v1",
        "http://127.0.0.1:8080/v1/chat/completions",
    ],
)
def test_openai_endpoint_from_any_usual_url(url):
    from saekit.interpret.llm import OpenAIChat

    assert OpenAIChat(url).endpoint == "http://127.0.0.1:8080/v1/chat/completions"
