"""saekit.evaluate against the definitions written out independently here."""

from __future__ import annotations

import pytest
import torch

import saekit


def test_metrics_match_their_definitions():
    torch.manual_seed(0)
    sae = saekit.create("relu", d_in=8, d_sae=24, l1_coefficient=1.0, seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(-0.3)
        sae.b_dec.copy_(torch.randn(8))
    x = torch.randn(1000, 8) * 2 + 5  # a large mean: variance about zero would be far off
    m = saekit.evaluate(sae, x, batch_size=97)  # batches that do not divide the data

    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae(x)
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert m["n_tokens"] == 1000
    assert m["l0"] == pytest.approx(float((f > 0).sum(1).float().mean()), rel=1e-6)
    assert m["l1"] == pytest.approx(float(f.sum(1).mean()), rel=1e-5)
    assert m["mse"] == pytest.approx(float(((x - x_hat) ** 2).mean()), rel=1e-5)
    assert m["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert m["explained_variance"] == pytest.approx(1 - float(fvu), rel=1e-5)
    gamma = float((x_hat**2).sum() / (x * x_hat).sum())
    assert m["relative_reconstruction_bias"] == pytest.approx(gamma, rel=1e-5)
    frequency = (f > 0).float().mean(0)
    torch.testing.assert_close(m["feature_frequency"], frequency)
    assert m["dead_fraction"] == pytest.approx(float((frequency == 0).float().mean()))
    assert m["dense_fraction"] == pytest.approx(float((frequency > 0.1).float().mean()))


def test_relative_reconstruction_bias_is_the_argmin_of_the_rescaled_error():
    x = torch.randn(500, 4)
    sae = saekit.create("topk", d_in=4, d_sae=4, k=4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4) * 0.7)  # reconstructs the positive part at 70%
    gamma = saekit.evaluate(sae, x)["relative_reconstruction_bias"]
    with torch.no_grad():
        x_hat = sae(x)
    grid = torch.linspace(0.3, 1.5, 1201)
    errors = torch.stack([((x_hat / g - x) ** 2).sum() for g in grid])
    assert gamma == pytest.approx(float(grid[errors.argmin()]), abs=2e-3)
    assert gamma < 1
