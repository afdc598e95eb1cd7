"""saekit explain through real language models: llama.cpp's OpenAI-compatible server
(xllamacpp) started on 127.0.0.1 on the embedded GGUF, and the local Hugging Face
explainer. Small on purpose (2 features, a few examples each): these check the plumbing
end to end (prompts in, replies parsed, records written, keys kept out of files), not the
quality of a 135M model's explanations."""

from __future__ import annotations

import json

import pytest
from llm_server import llama_server
from test_explain import SMALL, WordTokenizer, make_run

from saekit.app.cli import main
from saekit.data.model import default_model_path
from saekit.interpret.autointerp import ExplainConfig, explain_features
from saekit.interpret.records import read_explanations

pytestmark = pytest.mark.slow
TINY = {**SMALL, "n_test": 5, "n_negatives": 5, "n_train_per_quantile": 1, "explanation_tokens": 40}


def check_records(records: list[dict], explainer: str) -> None:
    assert [r["feature"] for r in records] == [0, 1]
    for r in records:
        assert r["explainer"] == explainer and isinstance(r["explanation"], str) and r["explanation"]
        assert r["n_detection"] == r["n_fuzzing"] == 10
        for kind in ("detection", "fuzzing"):
            assert 0.0 <= r[kind] <= 1.0 and 0 <= r[f"{kind}_unparsed"] <= 10


def test_explain_through_a_real_openai_compatible_server(tmp_path, capsys, monkeypatch):
    pytest.importorskip("xllamacpp", reason="xllamacpp (llama.cpp's server as a wheel) is in the test extra")
    run = make_run(tmp_path / "run", model="smollm2")
    key = "saekit-test-secret-key"
    with llama_server(str(default_model_path()), key=key) as url:
        monkeypatch.setenv("SAEKIT_TEST_KEY", "wrong")
        code = main(
            ["explain", str(run), "--ids", "0,1", "--explainer", f"openai:{url}", "--api-key-env", "SAEKIT_TEST_KEY"]
        )
        err = capsys.readouterr().err
        assert code == 2 and "HTTP 401" in err and "SAEKIT_TEST_KEY" in err and len(err.strip().splitlines()) == 1
        monkeypatch.setenv("SAEKIT_TEST_KEY", key)
        argv = [
            "explain",
            str(run),
            "--ids",
            "0,1",
            "--explainer",
            f"openai:{url}",
            "--api-key-env",
            "SAEKIT_TEST_KEY",
            "--n-test",
            "5",
            "--window",
            "8",
        ]
        assert main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "mean detection balanced accuracy" in out and "skipped feature(s) 1" in out  # 14 windows < 16
        path = run / "features" / "explanations.jsonl"
        records = list(read_explanations(path).values())
        assert [r["feature"] for r in records] == [0]
        for r in records:
            assert r["explainer"] == "openai:SmolLM2-135M-Instruct.Q4_1.gguf" and r["explanation"]
            assert r["n_detection"] == r["n_fuzzing"] == 10 and 0 <= r["detection"] <= 1 and 0 <= r["fuzzing"] <= 1
        assert key not in path.read_text() and "SAEKIT_TEST_KEY" not in path.read_text()
        before = path.read_text()
        assert main(argv) == 0  # resumed: everything done, nothing asked, the file unchanged
        assert path.read_text() == before


def test_explain_through_the_local_explainer(tmp_path):
    run = make_run(tmp_path / "run")
    records = explain_features(
        run, [0, 1], "local:", config=ExplainConfig(**TINY), progress=False, tokenizer=WordTokenizer()
    )
    check_records(records, "local:SmolLM2-135M-Instruct")
    on_disk = read_explanations(run / "features" / "explanations.jsonl")
    assert [on_disk[f] for f in (0, 1)] == [json.loads(json.dumps(r)) for r in records]
