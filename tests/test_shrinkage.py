"""Feature suppression, on the example where the answer is known in closed form.

One binary feature in one dimension: x = 1 with probability p, else 0. With the loss
‖x̂ − x‖²/d + c·|f| (d = 1), the optimum of a ReLU SAE reconstructs x = 1 as 1 − c/2
(minimise p·((b + a − 1)² + c·a) + (1 − p)·b² over the code a and the bias b: the
reconstruction b + a of x = 1 comes out at 1 − c/2 whatever b is). Architectures whose
penalty does not act on magnitudes (gated, JumpReLU, TopK) reconstruct it as 1, and so
does a ReLU SAE after fit_scale.
"""

from __future__ import annotations

import pytest
import torch

import saekit

P_FIRE = 0.3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def binary_feature(n: int = 8192, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, generator=generator) < P_FIRE).float()


def make_1d(arch: str, **options) -> saekit.SparseAutoencoder:
    sae = saekit.create(arch, d_in=1, d_sae=1, normalize_activations="none", reconstruction_loss="mean", **options)
    with torch.no_grad():  # one feature pointing the right way (a unit-norm 1-D decoder cannot flip sign)
        sae.W_dec.fill_(1.0)
        sae.W_enc.fill_(1.0)
    return sae


def train_1d(sae, x):
    return saekit.train(
        sae,
        x,
        steps=1500,
        batch_size=512,
        lr=0.01,
        precision="float32",
        progress=False,
        sparsity_warmup_fraction=0.0,
        lr_warmup_fraction=0.0,
    ).sae


def reconstruction_of_one(sae) -> float:
    with torch.no_grad():
        return float(sae(torch.ones(1, 1)))


@pytest.mark.parametrize("c", [0.2, 0.5, 1.0])
def test_relu_shrinks_to_one_minus_half_c_and_fit_scale_removes_it(c):
    x = binary_feature()
    sae = train_1d(make_1d("relu", l1_coefficient=c), x)
    assert reconstruction_of_one(sae) == pytest.approx(1 - c / 2, abs=0.02)
    assert saekit.evaluate(sae, x)["relative_reconstruction_bias"] < 1 - c / 4

    saekit.training.fit_scale(sae, x, steps=600, batch_size=512, lr=0.05)
    assert reconstruction_of_one(sae) == pytest.approx(1.0, abs=0.02)
    with torch.no_grad():
        zero = float(sae(torch.zeros(1, 1)))
    assert zero == pytest.approx(0.0, abs=0.02 + P_FIRE * c)


@pytest.mark.parametrize(
    "arch, options",
    [
        ("gated", {"l1_coefficient": 0.5}),
        ("jumprelu", {"l0_coefficient": 0.5}),
        ("topk", {"k": 1}),
        ("batchtopk", {"k": 1}),
    ],
)
def test_other_architectures_do_not_shrink(arch, options):
    x = binary_feature()
    sae = train_1d(make_1d(arch, **options), x)
    assert reconstruction_of_one(sae) == pytest.approx(1.0, abs=0.02)
