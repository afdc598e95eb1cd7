"""Every architecture survives its degenerate corners: k = 1, d_sae < 2k, every latent
dead, a batch of one token, one-dimensional data. Training runs to the end with finite
weights and a finite loss, and evaluation gives finite metrics."""

from __future__ import annotations

import math

import pytest
import torch

import saekit
from saekit.sae.registry import ARCHITECTURES, uses_k


def sparsity(arch: str, value: int) -> dict:
    return {"k": value} if uses_k(arch) else {"target_l0": value}


def data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, 2 * d, generator=generator) * (torch.rand(n, 2 * d, generator=generator) < 0.2)
    return codes @ torch.randn(2 * d, d, generator=generator) + 0.1


def assert_finite(sae, x):
    for name, tensor in sae.state_dict().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), f"{name} is not finite"
    metrics = saekit.evaluate(sae, x)
    for key in ("fvu", "l0", "mse"):
        assert math.isfinite(metrics[key]), f"{key} = {metrics[key]}"
    return metrics


CORNERS = {
    # name: (d_in, d_sae, sparsity, batch_size, steps)
    "k_is_1": (8, 32, 1, 64, 60),
    "d_sae_below_2k": (8, 5, 3, 64, 60),
    "batch_of_one_token": (8, 32, 2, 1, 60),
    "one_dimensional_data": (1, 4, 1, 64, 300),
}


@pytest.mark.parametrize("corner", list(CORNERS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trains_through_the_corner(arch, corner):
    d_in, d_sae, k, batch, steps = CORNERS[corner]
    x = data(4096, d_in)
    options = sparsity(arch, k)
    if arch == "matryoshka_batchtopk":
        options["group_sizes"] = [1, d_sae - 1]
    sae = saekit.create(arch, d_in=d_in, d_sae=d_sae, dead_tokens=256, **options)
    result = saekit.train(sae, x, steps=steps, batch_size=batch, lr=1e-2, progress=False, precision="float32")
    assert result.history and math.isfinite(result.history[-1]["loss"])
    assert_finite(sae, x)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_latent_dead(arch):
    """The loss and its gradients stay finite when no latent has fired for the dead window,
    and when no latent fires at all (the encoder's bias far below zero)."""
    x = data(512, 8)
    sae = saekit.create(arch, d_in=8, d_sae=32, dead_tokens=10, **sparsity(arch, 2))
    sae.train()
    sae.tokens_since_fired.fill_(10**6)
    assert bool(sae.dead_mask().all())
    out = sae.loss(x[:64])
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in sae.parameters())
    with torch.no_grad():
        for name in ("b_enc", "b_gate", "b_mag"):
            if hasattr(sae, name):
                getattr(sae, name).fill_(-1e3)
    saekit.train(sae, x, steps=40, batch_size=64, lr=1e-3, progress=False, precision="float32")
    assert_finite(sae, x)


def test_topk_k1_four_latents_one_dimension_4000_steps():
    """The feature-suppression example of the seed: once latents die, AuxK has to cope
    (it crashed at step ~1,980 with an empty index tensor)."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(20_000, 1, generator=generator) * (torch.rand(20_000, 1, generator=generator) < 0.3)) * 3
    sae = saekit.create("topk", d_in=1, d_sae=4, k=1, dead_tokens=2000)
    result = saekit.train(sae, x, steps=4000, batch_size=64, lr=1e-2, progress=False, precision="float32")
    assert result.steps == 4000 and result.tokens == 4000 * 64
    assert sae.aux_k == 1
    metrics = assert_finite(sae, x)
    assert metrics["fvu"] < 0.5  # one latent suffices for one dimension
