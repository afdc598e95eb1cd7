"""The CUDA paths: the fused functions and sparse kernels on the GPU, bf16 autocast with
float32 master weights, fused Adam with exact resume. Skipped where no GPU is visible."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.data.synthetic import make_toy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ARCHS = {
    "relu": {"l1_coefficient": 0.3},
    "gated": {"l1_coefficient": 0.3},
    "jumprelu": {"l0_coefficient": 0.1},
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
}


@pytest.fixture(scope="module")
def toy_x():
    return make_toy(32, 96, expected_l0=4, seed=3).sample(8192, seed=4)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_loss_and_gradients_on_the_gpu_equal_the_cpu(arch):
    cpu = saekit.create(arch, d_in=32, d_sae=128, seed=0, **ARCHS[arch])
    gpu = saekit.create(arch, d_in=32, d_sae=128, seed=0, **ARCHS[arch]).cuda()
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    expected, got = cpu.loss(x), gpu.loss(x.cuda())
    expected.loss.backward()
    got.loss.backward()
    torch.testing.assert_close(got.loss.cpu(), expected.loss, rtol=1e-4, atol=1e-4)
    for (name, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-3, atol=1e-4, msg=f"gradient of {name}")


@pytest.mark.parametrize("arch", ["relu", "gated", "jumprelu"])
def test_sparse_training_path_on_the_gpu_equals_the_dense_path(arch):
    """The sparse path's device-specific kernels (COO products, float32 embedding_bag)."""
    dense = saekit.create(arch, d_in=32, d_sae=128, seed=0, **ARCHS[arch]).cuda()
    sparse = saekit.create(arch, d_in=32, d_sae=128, seed=0, **ARCHS[arch]).cuda()
    dense.sparse_below, sparse.sparse_below = 0.0, 2.0
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1)).cuda()
    expected, got = dense.loss(x), sparse.loss(x)
    expected.loss.backward()
    got.loss.backward()
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.l0, expected.l0)
    for (name, p_dense), (_, p_sparse) in zip(dense.named_parameters(), sparse.named_parameters()):
        torch.testing.assert_close(p_sparse.grad, p_dense.grad, rtol=1e-3, atol=1e-4, msg=f"gradient of {name}")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bf16_autocast_on_the_gpu_matches_float32(toy_x, arch):
    options = dict(steps=300, batch_size=512, lr=3e-3, progress=False, device="cuda")
    ev = {}
    for precision in ("float32", "bfloat16"):
        sae = saekit.train(
            saekit.create(arch, d_in=32, d_sae=128, seed=2, **ARCHS[arch]), toy_x, precision=precision, **options
        ).sae
        assert sae.W_dec.dtype == torch.float32 and sae.W_dec.is_cuda
        ev[precision] = saekit.evaluate(sae, toy_x)["explained_variance"]
    assert ev["bfloat16"] == pytest.approx(ev["float32"], abs=0.005)


def test_fused_adam_resumes_exactly_on_the_gpu(toy_x, tmp_path):
    from test_train import InterruptAfter, Interrupted

    options = dict(
        steps=60, batch_size=256, lr=3e-3, precision="float32", progress=False, checkpoint_every=20, device="cuda"
    )
    whole = saekit.train(saekit.create("topk", d_in=32, d_sae=128, seed=1, k=4), toy_x, out=tmp_path / "a", **options)
    with pytest.raises(Interrupted):
        saekit.train(
            saekit.create("topk", d_in=32, d_sae=128, seed=1, k=4),
            InterruptAfter(toy_x, limit=45),
            out=tmp_path / "b",
            **options,
        )
    resumed = saekit.train(saekit.create("topk", d_in=32, d_sae=128, seed=9, k=4), toy_x, out=tmp_path / "b", **options)
    # Not bit-exact: CUDA's index_add_ and sparse matmul sum with atomics, in no fixed order.
    for name, tensor in whole.sae.state_for_save().items():
        torch.testing.assert_close(resumed.sae.state_for_save()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
