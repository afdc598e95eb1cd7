"""saekit's evaluation in SAEBench's core-eval output schema (``saekit evaluate RUN
--saebench FILE``): the field names and nesting of SAEBench's eval_output_schema_core.json
(CoreEvalOutput), so that SAEBench's tables and plots read saekit runs beside its own.

Where saekit and SAEBench define a metric alike, the value is saekit's measurement:
CE and KL spliced into the model (loss recovered is SAEBench's ce_loss_score, and its
kl_div_score is (KL_zero − KL_SAE)/KL_zero), L0, L1, cosine similarity, shrinkage. Where
they differ, the definition used is:

    explained_variance         1 − Σ‖x − x̂‖² / Σ‖x − μ‖² over all evaluated tokens (saekit's)
    explained_variance_legacy  SAEBench's legacy formula, per token against the batch mean
    mse                        the mean over tokens of ‖x − x̂‖² (SAEBench divides each
                               token's error by its batch's token count instead)

This module sits with the evaluation rather than in saekit.formats because it writes the
evaluation's metrics, which the format layer, below it, cannot compute.
"""

from __future__ import annotations

import importlib.metadata
import os
import time
import uuid
from typing import Any

import torch

from .._runtime.errors import UsageError
from ..sae.base import SparseAutoencoder

REQUIRED = (
    "kl_div_score",
    "kl_div_zero_ablation",
    "kl_div",
    "loss_recovered",
    "ce_zero_ablation",
    "ce_sae",
    "ce_clean",
    "explained_variance",
    "explained_variance_legacy",
    "mse",
    "cosine_similarity",
    "l2_norm_in",
    "l2_norm_out",
    "l2_ratio",
    "relative_reconstruction_bias",
    "l0",
    "l1",
    "n_predictions",
    "n_tokens",
    "feature_frequency",
)
"""The metrics a core-eval result is made of."""


def core_eval_output(
    metrics: dict[str, Any],
    sae: SparseAutoencoder,
    *,
    model_name: str,
    context_size: int,
    dataset: str = "",
    llm_dtype: str = "float32",
) -> dict[str, Any]:
    """The SAEBench core-eval result for ``metrics`` (saekit.evaluation.splice's) of ``sae``."""
    missing = [key for key in REQUIRED if key not in metrics]
    if missing:
        raise UsageError(
            f"the metrics lack {missing} (measured by a newer saekit); evaluate again "
            "(saekit evaluate RUN --force --saebench FILE)."
        )
    frequency = metrics["feature_frequency"]
    frequency = frequency if isinstance(frequency, torch.Tensor) else torch.tensor(frequency)
    frequency = frequency.double()
    total = float(frequency.sum()) or 1.0
    encoder_cos, decoder_cos = max_cosines(sae)
    return {
        "eval_type_id": "core",
        "eval_config": {
            "model_name": model_name,
            "llm_dtype": llm_dtype,
            "batch_size_prompts": 8,
            "n_eval_reconstruction_batches": 1,
            "n_eval_sparsity_variance_batches": 1,
            "dataset": dataset,
            "context_size": context_size,
            "compute_kl": True,
            "compute_ce_loss": True,
            "compute_l2_norms": True,
            "compute_sparsity_metrics": True,
            "compute_variance_metrics": True,
            "compute_featurewise_density_statistics": False,
            "compute_featurewise_weight_based_metrics": False,
            "exclude_special_tokens_from_reconstruction": True,
            "verbose": False,
        },
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {
            "model_behavior_preservation": {
                "kl_div_score": metrics["kl_div_score"],
                "kl_div_with_ablation": metrics["kl_div_zero_ablation"],
                "kl_div_with_sae": metrics["kl_div"],
            },
            "model_performance_preservation": {
                "ce_loss_score": metrics["loss_recovered"],
                "ce_loss_with_ablation": metrics["ce_zero_ablation"],
                "ce_loss_with_sae": metrics["ce_sae"],
                "ce_loss_without_sae": metrics["ce_clean"],
            },
            "reconstruction_quality": {
                "explained_variance": metrics["explained_variance"],
                "explained_variance_legacy": metrics["explained_variance_legacy"],
                "mse": metrics["mse"] * sae.d_out,
                "cossim": metrics["cosine_similarity"],
            },
            "shrinkage": {
                "l2_norm_in": metrics["l2_norm_in"],
                "l2_norm_out": metrics["l2_norm_out"],
                "l2_ratio": metrics["l2_ratio"],
                "relative_reconstruction_bias": metrics["relative_reconstruction_bias"],
            },
            "sparsity": {"l0": metrics["l0"], "l1": metrics["l1"]},
            "token_stats": {
                "total_tokens_eval_reconstruction": int(metrics["n_predictions"]),
                "total_tokens_eval_sparsity_variance": int(metrics["n_tokens"]),
            },
            "misc_metrics": {
                "freq_over_1_percent": float((frequency > 0.01).double().mean()),
                "freq_over_10_percent": float((frequency > 0.1).double().mean()),
                "normalized_freq_over_1_percent": float(frequency[frequency > 0.01].sum()) / total,
                "normalized_freq_over_10_percent": float(frequency[frequency > 0.1].sum()) / total,
                "average_max_encoder_cosine_sim": encoder_cos,
                "average_max_decoder_cosine_sim": decoder_cos,
                "frac_alive": float((frequency > 0).double().mean()),
            },
        },
        "eval_result_details": [],
        "sae_bench_commit_hash": "Unknown",
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": _version("sae-lens"),
        "sae_cfg_dict": sae.cfg.to_dict(),
        "eval_result_unstructured": {"saekit_version": _version("saekit"), "hook": metrics.get("hook")},
    }


@torch.no_grad()
def max_cosines(sae: SparseAutoencoder, chunk: int = 2048) -> tuple[float, float]:
    """The mean over features of each one's largest cosine with another feature, for the
    encoder columns and for the decoder rows (chunked: never [d_sae, d_sae] at once)."""
    results = []
    for matrix in (sae.W_enc.detach().float().t(), sae.W_dec.detach().float()):
        unit = torch.nn.functional.normalize(matrix, dim=1)
        best = []
        for begin in range(0, unit.shape[0], chunk):
            cos = unit[begin : begin + chunk] @ unit.t()
            cos[torch.arange(cos.shape[0]), torch.arange(begin, begin + cos.shape[0])] = -1
            best.append(cos.max(dim=1).values)
        results.append(float(torch.cat(best).mean()) if unit.shape[0] > 1 else 0.0)
    return results[0], results[1]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def results_file_name(release: str = "saekit", sae_id: str = "custom_sae") -> str:
    """SAEBench's name for a result file (get_results_filepath)."""
    return f"{release}_{sae_id}_eval_results.json".replace("/", "_").replace(os.sep, "_")
