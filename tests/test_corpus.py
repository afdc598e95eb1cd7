"""Corpus reading and tokenising: formats, packing layout, masks, determinism, splits."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.data.corpus import (
    Document,
    NotUtf8Warning,
    default_corpus_path,
    read_documents,
    tokenize,
)

BOS, EOS, PAD = 1, 2, 0


class CharTokenizer:
    """One token per character (id = 10 + code point mod 200); BOS 1, EOS 2, PAD 0."""

    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD
    all_special_ids = [PAD, BOS, EOS]
    name_or_path = "char"

    def __call__(self, texts, add_special_tokens=False):
        assert add_special_tokens is False
        return {"input_ids": [[10 + ord(c) % 200 for c in text] for text in texts]}

    def __len__(self) -> int:
        return 210


def ids(text: str) -> list[int]:
    return CharTokenizer()([text])["input_ids"][0]


# ---- reading ------------------------------------------------------------------------------


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "b" / "skip.json").write_text("{}")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden")
    (tmp_path / "empty.txt").write_text("  \n")
    docs = read_documents(tmp_path)
    assert [d.text for d in docs] == ["first", "second"]
    assert docs[1].source.endswith("two.md")


def test_single_text_file(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text("To be, or not to be")
    assert read_documents(path) == [Document("To be, or not to be", str(path))]


def test_json_lines_with_default_named_and_ambiguous_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"text": "a", "id": 1}, {"text": "b", "id": 2}]) + "\n\n")
    assert [d.text for d in read_documents(path)] == ["a", "b"]
    assert read_documents(path)[1].source == f"{path}:2"

    two = tmp_path / "two.jsonl"
    two.write_text(json.dumps({"body": "x", "title": "t"}) + "\n")
    with pytest.raises(ValueError, match="text_field"):
        read_documents(two)
    assert [d.text for d in read_documents(two, text_field="body")] == ["x"]
    with pytest.raises(ValueError, match="no field 'nope'"):
        read_documents(two, text_field="nope")

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_documents(bad)


def test_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [1, 2], "content": ["alpha", "beta"]}), path)
    assert [d.text for d in read_documents(path)] == ["alpha", "beta"]
    assert [d.text for d in read_documents(path, text_field="content")] == ["alpha", "beta"]


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"story": ["once", "upon"], "label": [0, 1]})
    data.save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in read_documents(tmp_path / "ds")] == ["once", "upon"]
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="point at one of them"):
        read_documents(tmp_path / "dd")
    assert len(read_documents(tmp_path / "dd" / "train")) == 2


def test_non_utf8_is_replaced_and_reported(tmp_path):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.warns(NotUtf8Warning, match="latin1.txt"):
        docs = read_documents(tmp_path)
    assert docs[1].text == "caf\ufffd"


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "blank.txt").write_text("   ")
    with pytest.raises(ValueError, match="empty"):
        read_documents(tmp_path)
    (tmp_path / "no_text").mkdir()
    with pytest.raises(ValueError, match="no .txt/.md files"):
        read_documents(tmp_path / "no_text")
    with pytest.raises(FileNotFoundError):
        read_documents(tmp_path / "missing")


def test_default_corpus_is_shakespeare():
    path = default_corpus_path()
    docs = read_documents(path)
    assert len(docs) >= 30 and all(d.source.endswith(".md") for d in docs)
    assert "Hamlet" in " ".join(d.text[:200] for d in docs)


# ---- tokenising ---------------------------------------------------------------------------


def test_packing_layout_bos_and_separators():
    docs = [Document("abcde", "0"), Document("fgh", "1"), Document("ijklmnop", "2")]
    corpus = tokenize(docs, CharTokenizer(), context_size=5)
    stream = ids("abcde") + [EOS] + ids("fgh") + [EOS] + ids("ijklmnop")  # 18 tokens → 4 contexts of 4
    assert corpus.tokens.shape == (4, 5)
    assert corpus.tokens[:, 0].tolist() == [BOS] * 4
    assert corpus.tokens[:, 1:].flatten().tolist() == stream[:16]
    # the SEP after "abcde" belongs to document 0, BOS to the document of the next token
    assert corpus.doc_ids[1].tolist() == [0, 0, 0, 1, 1]
    assert corpus.positions[2].tolist() == [0, 1, 2, 3, 4]
    assert corpus.train_mask[:, 0].sum() == 0
    assert not corpus.train_mask[corpus.tokens == EOS].any()
    assert corpus.n_tokens == 16 - 2


def test_keep_special_tokens():
    docs = [Document("abcde", "0"), Document("fgh", "1")]
    corpus = tokenize(docs, CharTokenizer(), context_size=3, exclude_special=False)
    assert corpus.train_mask.all()


def test_unpacked_documents_start_their_own_contexts_and_padding_is_masked():
    docs = [Document("abcde", "0"), Document("xy", "1")]
    corpus = tokenize(docs, CharTokenizer(), context_size=4, pack=False)
    # "abcde" → [BOS abc] [BOS de PAD]; "xy" → [BOS xy PAD]
    assert corpus.tokens.tolist() == [
        [BOS, *ids("abc")],
        [BOS, *ids("de"), PAD],
        [BOS, *ids("xy"), PAD],
    ]
    assert corpus.doc_ids.tolist() == [[0, 0, 0, 0], [0, 0, 0, -1], [1, 1, 1, -1]]
    assert corpus.train_mask.tolist() == [
        [False, True, True, True],
        [False, True, True, False],
        [False, True, True, False],
    ]


def test_too_short_corpus_is_an_error():
    with pytest.raises(ValueError, match="fewer than one context"):
        tokenize([Document("abc", "0")], CharTokenizer(), context_size=10)


def test_deterministic_fingerprint_depends_on_text_and_options():
    docs = [Document("the quick brown fox " * 5, "0"), Document("jumps over " * 7, "1")]
    a = tokenize(docs, CharTokenizer(), 8)
    b = tokenize(list(docs), CharTokenizer(), 8)
    assert torch.equal(a.tokens, b.tokens) and a.fingerprint == b.fingerprint
    assert tokenize(docs, CharTokenizer(), 9).fingerprint != a.fingerprint
    assert tokenize(docs, CharTokenizer(), 8, exclude_special=False).fingerprint != a.fingerprint
    changed = [docs[0], Document("jumps under " * 7, "1")]
    assert tokenize(changed, CharTokenizer(), 8).fingerprint != a.fingerprint


def test_max_contexts_stops_early():
    docs = [Document("x" * 100, str(i)) for i in range(50)]
    corpus = tokenize(docs, CharTokenizer(), 11, max_contexts=3, chars_per_call=150)
    assert len(corpus) == 3
    assert len(corpus.sources) < 50  # later documents were never tokenised
    full = tokenize(docs, CharTokenizer(), 11)
    assert torch.equal(corpus.tokens, full.tokens[:3])


def test_max_tokens_keeps_the_fewest_contexts_that_hold_them():
    docs = [Document("ab", str(i)) for i in range(300)]  # many separators: 2 train tokens in 3
    corpus = tokenize(docs, CharTokenizer(), 10, max_tokens=40, chars_per_call=20)
    assert corpus.train_mask[:-1].sum() < 40 <= corpus.n_tokens
    assert len(corpus.sources) < 300
    everything = tokenize(docs, CharTokenizer(), 10, max_tokens=10**6)
    assert everything.n_tokens == tokenize(docs, CharTokenizer(), 10).n_tokens


def test_split_is_deterministic_disjoint_and_complete():
    docs = [Document("lorem ipsum dolor " * 20, str(i)) for i in range(5)]
    corpus = tokenize(docs, CharTokenizer(), 16)
    train, held = corpus.split(0.2, seed=3)
    again_train, again_held = corpus.split(0.2, seed=3)
    assert torch.equal(held.context_index, again_held.context_index)
    assert len(held) == round(0.2 * len(corpus))
    together = torch.cat([train.context_index, held.context_index]).sort().values
    assert torch.equal(together, torch.arange(len(corpus)))
    assert torch.equal(held.tokens, corpus.tokens[held.context_index])
    assert not torch.equal(corpus.split(0.2, seed=4)[1].context_index, held.context_index)
    assert len({train.fingerprint, held.fingerprint, corpus.fingerprint}) == 3
    with pytest.raises(ValueError):
        corpus.split(0.0)
