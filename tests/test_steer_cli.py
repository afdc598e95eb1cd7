"""`saekit steer`, `saekit ablate` and `saekit contrast` end to end on the real model
(SmolLM2-135M), with an SAE whose features are planted, so that what each command must
show is known:

    feature 0   the direction of "love" at layers.3.resid_post (the mean activation on
                " love", " loves", ... minus the mean), reading that direction too
    feature 1   a detector of a marker word family (" telescope", " telescopes") that
                corpus A has and corpus B lacks
    2..15       random directions, firing on both corpora alike

The model is loaded once for the module (the commands' own load is patched to it), and
the bad-input tests need no model at all.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import saekit
from saekit.app.cli import main
from saekit.app.config import RunConfig

HOOK = "layers.3.resid_post"
D_SAE = 16
FAMILY = [" love", " loves", " loved", " lover", " loving"]
MARKER = [" telescope", " telescopes"]
PROMPTS = ["The weather today is", "He walked into the room and", "The soldiers marched", "My favourite food is"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_run(folder: Path, sae) -> Path:
    """A run folder as `saekit run` leaves it, as far as these commands read it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = RunConfig().with_overrides({"model.hook": HOOK, "corpus.context_size": 64})
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    sae.cfg.hook, sae.cfg.model = HOOK, "smollm2"
    sae.save(folder / "sae", overwrite=True)
    return folder


def lines(words: list[str], with_marker: bool, n: int = 30) -> str:
    """Plain sentences; every third one mentions a marker word when ``with_marker``."""
    out = []
    for i in range(n):
        word = words[i % len(words)]
        extra = f" through the{MARKER[i % 2]}" if with_marker and i % 3 == 0 else ""
        out.append(f"The {word} looked at the old house{extra} and spoke of the weather in the morning.")
    return "\n".join(out)


# ---- the bad-input tests: one line, exit 2, no model --------------------------------------------


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory) -> Path:
    return write_run(
        tmp_path_factory.mktemp("bare") / "run", saekit.create("relu", d_in=576, d_sae=D_SAE, l1_coefficient=0.0)
    )


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (
            ["steer", "{run}", "--feature", "16", "--strength", "2", "--prompt", "Hi"],
            ["--feature 16 is out of range", "0..15"],
        ),
        (["steer", "{run}", "--feature", "1", "--strength", "2", "--prompt", "  "], ["the prompt is empty"]),
        (["steer", "{run}", "--feature", "1", "--prompt", "Hi"], ["either --strength S", "or --clamp V"]),
        (
            ["steer", "{run}", "--feature", "1", "--strength", "2", "--prompt", "Hi"],
            ["--unit max needs the run's feature statistics", "--unit abs"],
        ),
        (["ablate", "{run}", "--feature", "99", "--text", "Hi"], ["--feature 99 is out of range"]),
        (["ablate", "{run}", "--feature", "1", "--text", ""], ["the text is empty"]),
        (["contrast", "{run}", "--corpus", "default:farces", "--against", "default"], ["no part 'farces'", "comedies"]),
        (["contrast", "{run}", "--corpus", "/no/such/corpus", "--against", "default"], ["does not exist"]),
        (["steer", "{run}", "--feature", "-1", "--strength", "2", "--prompt", "Hi"], ["--feature"]),
        (["steer", "/no/such/run", "--feature", "1", "--strength", "2", "--prompt", "Hi"], ["not a run folder"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, bare_run, argv, fragments):
    code, _, err = run_cli(capsys, *[a.replace("{run}", str(bare_run)) for a in argv])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_json_files_saekit_did_not_write_are_not_replaced(capsys, bare_run, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    code, _, err = run_cli(capsys, "ablate", str(bare_run), "--feature", "1", "--text", "Hi", "--json", str(mine))
    assert code == 2 and "already exists" in err and mine.read_text() == "{}"


# ---- the commands on the real model --------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded():
    from saekit.data.model import load_model

    return load_model()


@pytest.fixture(scope="module")
def planted(tmp_path_factory, loaded):
    """(run folder, corpus A folder, corpus B folder) with the planted SAE and its statistics."""
    from saekit.data.corpus import Document, tokenize
    from saekit.data.model import capture
    from saekit.interpret import collect_feature_stats

    tok = loaded.tokenizer
    root = tmp_path_factory.mktemp("planted")
    text_a, text_b = lines(["man", "woman", "child"], True), lines(["man", "woman", "child"], False)
    love_text = " ".join(f"I{w} thee, and thou{w} me; our{w} is true." for w in FAMILY * 4)
    for name, text in (("a", text_a), ("b", text_b)):
        (root / name).mkdir()
        for i in range(3):
            (root / name / f"doc{i}.txt").write_text(text)
    corpus = tokenize([Document(love_text, "love"), Document(text_a, "a")], tok, 64)
    acts = capture(loaded, corpus.tokens, HOOK)[HOOK].float()  # [n, 64, 576]
    mask = corpus.train_mask
    first = lambda words: [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]  # noqa: E731
    mean = acts[mask].mean(0)
    sae = saekit.create("relu", d_in=576, d_sae=D_SAE, l1_coefficient=0.0, seed=3)
    with torch.no_grad():
        sae.b_dec.zero_()
        for feature, words in ((0, FAMILY), (1, MARKER)):
            on = torch.isin(corpus.tokens, torch.tensor(first(words))) & mask
            direction = acts[on].mean(0) - mean
            direction /= direction.norm()
            projection = (acts[mask] - mean) @ direction
            off_max = float(projection[~on[mask]].max())
            on_min = float(projection[on[mask]].min())
            sae.W_dec[feature] = direction
            sae.W_enc[:, feature] = direction
            # fires above the larger of the off-target maximum and halfway to the targets
            sae.b_enc[feature] = float(mean @ direction) * -1 - max(off_max, 0.5 * on_min)
        sae.b_enc[2:] = -2.0  # random features: fire on both corpora alike
    run = write_run(root / "run", sae)
    collect_feature_stats(sae, loaded, corpus, n_top=4, n_random=0, progress=False).save(run / "features")
    return run, root / "a", root / "b"


@pytest.fixture()
def model_once(monkeypatch, loaded):
    import saekit.data.model as model

    monkeypatch.setattr(model, "load_model", lambda *args, **kwargs: loaded)


def family_count(texts: list[str]) -> int:
    return sum(len(re.findall(r"\blov", t.lower())) for t in texts)


@pytest.mark.slow
def test_steering_a_word_family_feature_makes_the_family_more_frequent(capsys, planted, model_once, tmp_path):
    from saekit.interpret import FeatureStats
    from saekit.interpret.labels import token_decoder, top_tokens

    run, _, _ = planted
    decode = token_decoder(saekit.data.model.load_model().tokenizer)
    labels = top_tokens(FeatureStats.load(run / "features").top, 0, decode)
    assert labels and set(labels) <= set(FAMILY)  # a feature whose top tokens are a word family
    out = tmp_path / "steer.json"
    argv = ["steer", str(run), "--feature", "0", "--unit", "abs", "--strength", "45", "--max-new-tokens", "16"]
    code, printed, err = run_cli(capsys, *argv, *[x for p in PROMPTS for x in ("--prompt", p)], "--json", str(out))
    assert code == 0, err
    rows = json.loads(out.read_text())["continuations"]
    plain, steered = family_count([r["unsteered"] for r in rows]), family_count([r["steered"] for r in rows])
    assert steered >= plain + 4, rows  # measured: 1 → 6+ over these four prompts
    assert "unsteered" in printed and "│ steered" in printed and "x ← x + 45·d_F" in printed


@pytest.mark.slow
def test_steering_with_strength_zero_continues_exactly_as_unsteered(capsys, planted, model_once, tmp_path):
    run, _, _ = planted
    out = tmp_path / "zero.json"
    code, _, err = run_cli(
        capsys, "steer", str(run), "--feature", "0", "--strength", "0", "--prompt", PROMPTS[0], "--json", str(out)
    )
    assert code == 0, err
    row = json.loads(out.read_text())["continuations"][0]
    assert row["steered"] == row["unsteered"] and row["unsteered"].strip()
    # clamping the marker feature, which is zero on this prompt, to 0 is the identity too
    argv = ["steer", str(run), "--feature", "1", "--clamp", "0", "--prompt", PROMPTS[0], "--json", str(out)]
    code, printed, err = run_cli(capsys, *argv, "--overwrite")
    assert code == 0, err
    clamped = json.loads(out.read_text())
    assert clamped["edit"]["kind"] == "clamp" and clamped["continuations"][0]["steered"] == row["unsteered"]
    assert "f_F clamped to 0" in printed


@pytest.mark.slow
def test_ablation_changes_nothing_before_the_feature_first_fires(capsys, planted, model_once, tmp_path):
    run, _, _ = planted
    out = tmp_path / "ablate.json"
    text = "The old man walked home, and I love thee more than words can say."
    code, printed, err = run_cli(capsys, "ablate", str(run), "--feature", "0", "--text", text, "--json", str(out))
    assert code == 0, err
    positions = json.loads(out.read_text())["positions"]
    fired = [i for i, p in enumerate(positions) if p["activation"] > 0]
    love = next(i for i, p in enumerate(positions) if p["token"] == " love")
    assert fired and positions[love]["activation"] > 0 and fired[0] > 0
    assert all(p["max_abs_delta"] == 0.0 for p in positions[: fired[0]])  # a causal model: nothing earlier moves
    # the first firing moves the prediction beyond rounding noise (it may be a weak one:
    # 0.9 at " home", 0.1 nats, on a float32 model); the strong one at " love" moves it a lot
    assert positions[fired[0]]["max_abs_delta"] > 1e-2
    assert positions[love]["max_abs_delta"] > 0.5
    assert "most up" in printed and "most down" in printed


@pytest.mark.slow
def test_contrast_ranks_the_marker_feature_first_and_a_corpus_against_itself_has_none(
    capsys, planted, model_once, tmp_path
):
    run, a, b = planted
    out = tmp_path / "contrast.json"
    code, printed, err = run_cli(
        capsys, "contrast", str(run), "--corpus", str(a), "--against", str(b), "--json", str(out)
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    top = result["features"][0]
    assert top["feature"] == 1 and top["specific"] and top["count_b"] == 0 and top["lower_bound"] > 0
    assert any(t.strip().startswith("tele") for t in top["top_tokens"])
    assert result["n_specific"] == 1  # the random features fire alike on both
    assert "«" in printed and "tele" in printed
    code, printed, err = run_cli(capsys, "contrast", str(run), "--corpus", str(a), "--against", str(a), "--top", "3")
    assert code == 0, err
    assert "no feature is specific to A" in printed
