"""Naming a corpus on the command line, including parts of the embedded one.

    default                         every play of the embedded Shakespeare corpus
    default:comedies                one group of plays (comedies, histories, problems,
                                    roman, romances, tragedies)
    default:comedies,romances       several groups or plays, comma-separated
    default:tragedies/hamlet        one play (its file name without .md)
    PATH                            any corpus read_documents reads (a folder, a text
                                    file, .jsonl, .parquet, a datasets folder)

so that two parts of the offline corpus can be set against each other (``saekit
contrast RUN --corpus default:comedies --against default:tragedies``).
"""

from __future__ import annotations

from pathlib import Path

from .._runtime.errors import UsageError
from .corpus import Document, default_corpus_path, read_documents

DEFAULT = "default"


def embedded_parts() -> dict[str, list[str]]:
    """{group: [play, ...]} of the embedded corpus."""
    root = default_corpus_path()
    return {
        group.name: sorted(p.stem for p in group.glob("*.md"))
        for group in sorted(root.iterdir())
        if group.is_dir() and not group.name.startswith(("_", "."))
    }


def corpus_paths(spec: str) -> list[Path]:
    """The files or folders a corpus spec names (module docstring)."""
    if spec == DEFAULT:
        return [default_corpus_path()]
    if not spec.startswith(DEFAULT + ":"):
        path = Path(spec).expanduser()
        if not path.exists():
            raise UsageError(
                f"corpus {spec!r} does not exist; give a folder or file of texts, or a part of the embedded "
                "corpus such as default:comedies (see `saekit contrast --help`)."
            )
        return [path]
    root, parts = default_corpus_path(), embedded_parts()
    paths = []
    for name in spec.removeprefix(DEFAULT + ":").split(","):
        name = name.strip().removesuffix(".md")
        group, _, play = name.partition("/")
        if group in parts and (not play or play in parts[group]):
            paths.append(root / group / (f"{play}.md" if play else ""))
            continue
        owners = [g for g, plays in parts.items() if name in plays]
        if owners:
            paths.append(root / owners[0] / f"{name}.md")
            continue
        raise UsageError(
            f"corpus {spec!r}: the embedded corpus has no part {name!r}; its groups are "
            f"{', '.join(parts)} (e.g. default:comedies), and a play is named like default:tragedies/hamlet."
        )
    return paths


def read_corpus(spec: str, text_field: str | None = None) -> list[Document]:
    """The documents of a corpus spec, in spec order (each path read as read_documents reads it)."""
    return [document for path in corpus_paths(spec) for document in read_documents(path, text_field=text_field)]
