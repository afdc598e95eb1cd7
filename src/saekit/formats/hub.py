"""SAEs on the Hugging Face Hub, through ``huggingface_hub`` (and so its cache, its token,
and ``HF_HUB_OFFLINE=1``):

    hf://ORG/REPO/PATH/IN/REPO[@REVISION]   the folder PATH of a model repo
    saelens://RELEASE/SAE_ID                an entry of SAELens's pretrained registry
                                            (pretrained_saes.yaml: release → repo_id, and
                                            sae_id → path), read from the installed sae_lens
                                            package without importing it, or from the file
                                            named by $SAEKIT_SAELENS_REGISTRY

Only the files of that one folder are fetched. A release whose files need a conversion
saekit does not have is refused by name.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import FormatError

REGISTRY_ENV = "SAEKIT_SAELENS_REGISTRY"
CONVERSIONS = {
    None: "saekit-or-saelens",
    "sae_lens": "saekit-or-saelens",
    "gemma_2": "gemma_scope",
    "dictionary_learning_1": "dictionary_learning",
    "sparsify": "sparsify",
}
"""SAELens conversion functions whose files saekit reads itself."""


def fetch(source: str) -> Path:
    """The local folder (in the Hub cache) holding the SAE ``source`` names."""
    if source.startswith("saelens://"):
        repo, folder, revision = _from_registry(source.removeprefix("saelens://"))
    else:
        repo, folder, revision = _parse(source.removeprefix("hf://"))
    return _download(repo, folder, revision, source)


def _parse(text: str) -> tuple[str, str, str | None]:
    text, _, revision = text.partition("@")
    parts = [p for p in text.split("/") if p]
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise FormatError(f"hf://{text}: a Hub SAE is hf://ORG/REPO/PATH (the path of its folder in the repo).")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


def _download(repo: str, folder: str, revision: str | None, source: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise FormatError(f"{source}: reading the Hub needs huggingface_hub (pip install huggingface_hub).") from None
    patterns = [f"{folder}/*"] if folder else None
    try:
        root = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise FormatError(
            f"{source}: {repo} is not in the local Hub cache"
            + (
                " and HF_HUB_OFFLINE is set; download it on a machine with network, or unset HF_HUB_OFFLINE."
                if offline
                else "; check the repo id and your network."
            )
        ) from None
    except RepositoryNotFoundError:
        raise FormatError(
            f"{source}: the Hub has no repo {repo!r} (or it is private: log in with `hf auth login`)."
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise FormatError(
            f"{source}: the Hub could not give {repo}/{folder} ({' '.join(str(error).split())[:200]})."
        ) from None
    path = root / folder if folder else root
    if not path.is_dir() or not any(path.iterdir()):
        raise FormatError(
            f"{source}: repo {repo} has no folder {folder!r} (at this revision) holding an SAE; "
            "check the path in the repo."
        )
    return path


def _from_registry(text: str) -> tuple[str, str, str | None]:
    release, _, sae_id = text.partition("/")
    if not release or not sae_id:
        raise FormatError(f"saelens://{text}: a pretrained SAE is saelens://RELEASE/SAE_ID.")
    registry = _registry()
    if release not in registry:
        import difflib

        close = difflib.get_close_matches(release, list(registry), n=3)
        raise FormatError(
            f"saelens://{text}: SAELens's registry has no release {release!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "."
        )
    entry = registry[release]
    saes = {item.get("id"): item for item in entry.get("saes", []) if isinstance(item, dict)}
    if sae_id not in saes:
        shown = ", ".join(list(saes)[:5]) + (", ..." if len(saes) > 5 else "")
        raise FormatError(f"saelens://{text}: release {release!r} has no SAE {sae_id!r}; its SAEs are {shown}.")
    conversion = entry.get("conversion_func")
    if conversion not in CONVERSIONS:
        raise FormatError(
            f"saelens://{text}: release {release!r} needs SAELens's {conversion!r} conversion, which "
            f"saekit does not have; it reads {', '.join(str(c) for c in CONVERSIONS if c)} releases."
        )
    return entry["repo_id"], saes[sae_id]["path"], None


def _registry() -> dict:
    import yaml

    path = os.environ.get(REGISTRY_ENV)
    if path:
        file = Path(path)
    else:
        spec = importlib.util.find_spec("sae_lens")
        if spec is None or not spec.submodule_search_locations:
            raise FormatError(
                "saelens:// names an entry of SAELens's pretrained registry, which comes with the "
                f"sae_lens package (not installed); install sae-lens, set ${REGISTRY_ENV} to a "
                "pretrained_saes.yaml, or use hf://ORG/REPO/PATH."
            )
        file = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    if not file.is_file():
        raise FormatError(f"{file}: SAELens's pretrained registry is not there.")
    data = yaml.safe_load(file.read_text())
    if not isinstance(data, dict):
        raise FormatError(f"{file} is not a registry of releases.")
    return data
