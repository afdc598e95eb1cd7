"""Every architecture's loss and gradients against a plain-PyTorch reference written
here from the papers' formulas, on random inputs and random parameters."""

from __future__ import annotations

import pytest
import torch

import saekit

D_IN, D_SAE, BATCH = 12, 40, 64


def randomise(sae, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.3 if name != "W_dec" else 1.0))
        if hasattr(sae, "threshold") and isinstance(sae.threshold, torch.nn.Parameter):
            sae.threshold.copy_(torch.rand(D_SAE, generator=generator) * 0.5)
    return sae


def params(sae):
    return {name: p.detach().clone().requires_grad_(True) for name, p in sae.named_parameters()}


def mse(x, x_hat):
    return (x_hat - x).pow(2).sum(-1).mean()


def reference_relu(p, x, lam, weighted):
    f = torch.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    x_hat = f @ p["W_dec"] + p["b_dec"]
    penalty = (f * p["W_dec"].norm(dim=1)).sum(-1).mean() if weighted else f.abs().sum(-1).mean()
    return mse(x, x_hat) + lam * penalty


def reference_gated(p, x, lam):
    centred = x - p["b_dec"]
    pi_gate = centred @ p["W_enc"] + p["b_gate"]
    W_mag = p["W_enc"] * torch.exp(p["r_mag"])  # weight sharing: W_mag = exp(r_mag) ⊙ W_gate
    pi_mag = centred @ W_mag + p["b_mag"]
    f = (pi_gate > 0).float() * torch.relu(pi_mag)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    sparsity = (torch.relu(pi_gate) * p["W_dec"].norm(dim=1)).sum(-1).mean()
    aux = mse(x, torch.relu(pi_gate) @ p["W_dec"].detach() + p["b_dec"].detach())
    return mse(x, x_hat) + lam * sparsity + aux


def reference_topk(p, x, k, dead, aux_k, aux_coefficient):
    z = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    top = z.topk(k, dim=-1)
    f = torch.zeros_like(z).scatter(-1, top.indices, torch.relu(top.values))
    x_hat = f @ p["W_dec"] + p["b_dec"]
    loss = mse(x, x_hat)
    if dead.any():
        loss = loss + reference_auxk(p, z, (x - x_hat).detach(), dead, aux_k, aux_coefficient)
    return loss


def straight_through_relu(v):
    """ReLU(v) forward, the identity backward."""
    return v + (torch.relu(v) - v).detach()


def reference_auxk(p, z, residual, dead, aux_k, aux_coefficient):
    """AuxK as Gao et al. write it: the residual reconstructed from the aux_k largest
    pre-activations of dead latents, ReLU'd; saekit's gradient passes that ReLU straight
    through (sparse_decode._aux_gamma)."""
    z_dead = torch.where(dead, z, torch.full_like(z, float("-inf")))
    k_aux = min(aux_k, int(dead.sum()))
    top_dead = z_dead.topk(k_aux, dim=-1)
    f_aux = torch.zeros_like(z).scatter(-1, top_dead.indices, straight_through_relu(top_dead.values))
    return aux_coefficient * min(int(dead.sum()) / aux_k, 1.0) * mse(residual, f_aux @ p["W_dec"])


def reference_batchtopk(p, x, k, dead=None, aux_k=0):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    z = torch.relu(pre)
    keep = z.flatten().topk(k * x.shape[0]).indices
    mask = torch.zeros(z.numel(), dtype=torch.bool)
    mask[keep] = True
    f = z * mask.view_as(z)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    loss = mse(x, x_hat)
    if dead is not None and dead.any():
        loss = loss + reference_auxk(p, pre, (x - x_hat).detach(), dead, aux_k, 1.0)
    return loss


def check_gradients(sae, reference_loss, x, exclude=()):
    p = params(sae)
    expected = reference_loss(p, x)
    expected.backward()
    sae.zero_grad()
    actual = sae.loss(x).loss
    actual.backward()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for name, param in sae.named_parameters():
        if name in exclude:
            continue
        torch.testing.assert_close(param.grad, p[name].grad, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


PATHS = {"dense": 0.0, "sparse": 2.0}  # sparse_below: never, always


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("decoder_norm", ["unit", "weighted"])
def test_relu(decoder_norm, path):
    sae = randomise(saekit.create("relu", d_in=D_IN, d_sae=D_SAE, l1_coefficient=0.7, decoder_norm=decoder_norm))
    sae.sparse_below = PATHS[path]
    x = torch.randn(BATCH, D_IN)
    check_gradients(sae, lambda p, x: reference_relu(p, x, 0.7, decoder_norm == "weighted"), x)


@pytest.mark.parametrize("path", list(PATHS))
def test_gated(path):
    sae = randomise(saekit.create("gated", d_in=D_IN, d_sae=D_SAE, l1_coefficient=0.3))
    sae.sparse_below = PATHS[path]
    check_gradients(sae, lambda p, x: reference_gated(p, x, 0.3), torch.randn(BATCH, D_IN))


@pytest.mark.parametrize("path", list(PATHS))
def test_jumprelu_loss_and_straight_through_gradients(path):
    eps, lam = 0.5, 0.2
    sae = randomise(saekit.create("jumprelu", d_in=D_IN, d_sae=D_SAE, l0_coefficient=lam, jumprelu_bandwidth=eps))
    sae.sparse_below = PATHS[path]
    x = torch.randn(BATCH, D_IN)
    p = params(sae)
    theta = p["threshold"].detach()
    z = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    gate = (z > theta).float()
    f = z * gate
    x_hat = f @ p["W_dec"] + p["b_dec"]
    expected = mse(x, x_hat) + lam * gate.sum(-1).mean()
    mse(x, x_hat).backward()  # every parameter but θ sees the ordinary gradient of the reconstruction

    # θ by hand: K(u) = 1[|u| < 1/2]; ∂f/∂θ := −(θ/ε)K((z−θ)/ε), ∂H(z−θ)/∂θ := −(1/ε)K((z−θ)/ε)
    z_value = z.detach()
    kernel = ((z_value - theta) / eps).abs().lt(0.5).float()
    grad_f = 2 * ((f @ p["W_dec"] + p["b_dec"] - x) @ p["W_dec"].t()).detach() / BATCH
    expected_theta_grad = (grad_f * -(theta / eps) * kernel).sum(0) + lam * (-(1 / eps) * kernel).sum(0) / BATCH
    assert kernel.sum() > 0, "the test must exercise the kernel"

    actual = sae.loss(x).loss
    actual.backward()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.threshold.grad, expected_theta_grad, rtol=1e-4, atol=1e-5)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, name).grad, p[name].grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("rows_at_a_time", [None, 7])
@pytest.mark.parametrize("dead_every", [None, 3, 5])
def test_topk_with_auxk(dead_every, rows_at_a_time, monkeypatch):
    """Loss and gradients against the plain definition, AuxK included, AuxK's picks made
    from the main selection's pre-activations; ``rows_at_a_time``: the CPU forward's block
    of tokens (TOPK_ROWS), here 7 so that 64 rows end in a partial block. Every third
    latent dead (AuxK searches whole rows) or every fifth (it gathers the dead columns),
    some of them in tokens' main top k too: those (token, latent) pairs get gradient from
    both terms."""
    from saekit.sae import sparse_decode

    if rows_at_a_time is not None:
        monkeypatch.setattr(sparse_decode, "TOPK_ROWS", rows_at_a_time)
    sae = randomise(saekit.create("topk", d_in=D_IN, d_sae=D_SAE, k=5, aux_k=6, dead_tokens=100))
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    x = torch.randn(BATCH, D_IN)
    if dead_every:
        dead[::dead_every] = True
        sae.tokens_since_fired[dead] = 1000
        assert dead[sae.pre_activations(x).topk(5).indices].any()  # pairs in both selections
    check_gradients(sae, lambda p, x: reference_topk(p, x, 5, dead, 6, 1.0), x)


@pytest.mark.parametrize("with_dead", [False, True])
def test_batchtopk_with_auxk(with_dead):
    sae = randomise(saekit.create("batchtopk", d_in=D_IN, d_sae=D_SAE, k=5, aux_k=6, dead_tokens=100))
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    x = torch.randn(BATCH, D_IN)
    if with_dead:
        dead[::3] = True
        sae.tokens_since_fired[dead] = 1000
    check_gradients(sae, lambda p, x: reference_batchtopk(p, x, 5, dead, 6), x)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_auxk_reaches_a_latent_that_is_negative_on_every_token(arch):
    """A dead latent whose pre-activations are below 0 on every token decodes nothing in
    AuxK, but AuxK's gradient still reaches it, straight through the ReLU: ∂L/∂b_enc is
    −2/B Σ_t (e_t − ê_t)·d, which raises its pre-activations where its decoder row points
    along what AuxK leaves of the residual. Through the ReLU it would get none and stay
    dead for good."""
    torch.manual_seed(0)
    sae = randomise(saekit.create(arch, d_in=D_IN, d_sae=D_SAE, k=5, aux_k=2, aux_dead_batches=1))
    x = torch.randn(BATCH, D_IN)
    stuck, other = 7, 11  # the only two dead latents: with aux_k 2, AuxK picks both on every token
    with torch.no_grad():
        sae.b_enc[stuck] = -100.0
        sae.tokens_since_fired[[stuck, other]] = 10**6
    assert (sae.pre_activations(x)[:, stuck] < 0).all()
    out = sae.loss(x)
    sae.zero_grad()
    out.parts["auxiliary"].backward()
    with torch.no_grad():
        e_hat = sae.pre_activations(x)[:, other].clamp(min=0)[:, None] * sae.W_dec[other]
        expected = -2 * ((x - out.x_hat - e_hat) @ sae.W_dec[stuck]).mean()
    assert sae.W_dec.grad[stuck].abs().max() == 0  # it decodes nothing
    assert sae.W_enc.grad[:, stuck].abs().max() > 0
    torch.testing.assert_close(sae.b_enc.grad[stuck], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka_batchtopk"])
def test_auxk_window_counts_batches_and_defaults(arch):
    """A latent joins AuxK after aux_dead_batches silent batches, long before dead_tokens
    counts it dead; aux_k defaults to k // 2 and the loss weight to 1."""
    sae = saekit.create(arch, d_in=D_IN, d_sae=D_SAE, k=5, aux_dead_batches=3)
    assert sae.aux_k == 2 and sae.cfg.aux_coefficient == 1.0 and sae.cfg.dead_tokens == 1_000_000
    silent = torch.zeros(D_SAE, dtype=torch.bool)
    silent[::4] = True
    x = torch.randn(BATCH, D_IN)
    for batch in range(1, 5):
        assert ("auxiliary" in sae.loss(x).parts) == (batch > 3)
        assert (sae.aux() is None) == (batch <= 3)
        sae.update_firing(~silent, 64)
        assert torch.equal(sae.aux_dead_mask(), silent if batch >= 3 else torch.zeros_like(silent)), batch
        assert not sae.dead_mask().any()


def test_batchtopk():
    sae = randomise(saekit.create("batchtopk", d_in=D_IN, d_sae=D_SAE, k=5))
    check_gradients(sae, lambda p, x: reference_batchtopk(p, x, 5), torch.randn(BATCH, D_IN))


def test_batchtopk_inference_threshold_is_the_running_minimum():
    sae = randomise(saekit.create("batchtopk", d_in=D_IN, d_sae=D_SAE, k=5, batchtopk_threshold_momentum=0.0))
    x = torch.randn(BATCH, D_IN)
    sae.loss(x)
    with torch.no_grad():
        f = sae.select_batch(sae.pre_activations(x))
    assert float(sae.threshold) == pytest.approx(float(f[f > 0].min()))
    sae.eval()
    z = sae.pre_activations(x)
    torch.testing.assert_close(sae.encode(x), z * (z > sae.threshold).float())


def test_unit_norm_projection_removes_the_parallel_gradient_and_renormalises():
    sae = randomise(saekit.create("relu", d_in=D_IN, d_sae=D_SAE, l1_coefficient=0.1))
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
    sae.loss(torch.randn(BATCH, D_IN)).loss.backward()
    sae.before_optimizer_step()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    # Zero up to float32 rounding of a dot product of this gradient's size.
    assert (parallel.abs() <= 1e-6 * (1 + sae.W_dec.grad.norm(dim=1))).all(), parallel
    with torch.no_grad():
        sae.W_dec -= 0.5 * sae.W_dec.grad
    sae.after_optimizer_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


def test_batch_topk_selection_is_the_flat_topk_over_the_batch():
    from saekit.sae.selection import batch_topk_entries

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(64, 500, generator=generator)
    z[3] += 4.0  # one token holds far more than its 4k candidates of the batch's top entries
    z[7] -= 10.0  # and one holds none
    values, indices, tokens = batch_topk_entries(z, 5)
    top = torch.relu(z).flatten().topk(5 * 64)
    expected = {(int(i) // 500, int(i) % 500): float(v) for v, i in zip(top.values, top.indices)}
    assert {(int(t), int(i)): float(v) for t, i, v in zip(tokens, indices, values)} == expected
    assert torch.equal(tokens, tokens.sort().values) and int((tokens == 3).sum()) > 20 and not (tokens == 7).any()


@pytest.mark.parametrize(
    "case", ["random", "clustered", "one_block_holds_all", "ties", "few_positive", "nan_row", "short_rows", "odd_width"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_topk_selects_each_rows_k_largest(case, dtype):
    """row_topk's block-maxima path (and its fallbacks) gives every row the same k values as
    torch.topk, indices that point at them, and on distinct values the same indices."""
    from saekit.sae.selection import ROW_BLOCK, row_topk

    generator = torch.Generator().manual_seed(4)
    batch, k = 48, 7
    width = {"short_rows": 4 * k * ROW_BLOCK - ROW_BLOCK, "odd_width": 40 * ROW_BLOCK + 3}.get(case, 40 * ROW_BLOCK)
    z = torch.randn(batch, width, generator=generator)
    if case == "clustered":  # the large entries of a row crowd into few blocks
        z[:, 5 * ROW_BLOCK : 6 * ROW_BLOCK] += 3.0
        z[:, 17 * ROW_BLOCK : 17 * ROW_BLOCK + 3] += 5.0
    elif case == "one_block_holds_all":  # every one of the top k in one block
        z[:, 2 * ROW_BLOCK : 2 * ROW_BLOCK + k] += 50.0
    elif case == "ties":
        z = torch.randint(-2, 3, (batch, width), generator=generator).float()
    elif case == "few_positive":
        z -= 3.0
    elif case == "nan_row":
        z[5, 100] = float("nan")
    z = z.to(dtype)
    values, indices = row_topk(z, k)
    expected = z.topk(k, dim=-1, sorted=False)
    assert values.shape == indices.shape == (batch, k) and values.dtype == dtype
    same = torch.equal(values.sort(-1).values, expected.values.sort(-1).values)
    if case == "nan_row":  # torch.topk ranks NaN first; row_topk falls back to it whole
        assert torch.equal(values.isnan(), expected.values.isnan())
        finite = ~values.isnan().any(1)
        same = torch.equal(values[finite].sort(-1).values, expected.values[finite].sort(-1).values)
    else:
        assert torch.equal(z.gather(1, indices), values)
        assert all(len(set(row)) == k for row in indices.tolist())  # k different latents each
    assert same
    folded = row_topk(z.view(6, batch // 6, width), k)  # leading dimensions: the same rows
    assert torch.equal(folded[0].reshape(batch, k).nan_to_num(), values.nan_to_num())
    assert torch.equal(folded[1].reshape(batch, k), indices)
    if case in ("random", "clustered", "one_block_holds_all") and dtype == torch.float32:  # no ties
        assert torch.equal(indices.sort(-1).values, expected.indices.sort(-1).values)


def test_batch_topk_keeps_every_entry_tied_with_the_threshold():
    from saekit.sae.selection import batch_topk_entries

    z = torch.randint(-3, 4, (32, 50), generator=torch.Generator().manual_seed(1)).float()  # many ties
    values, indices, tokens = batch_topk_entries(z, 3)
    tau = torch.relu(z).flatten().topk(3 * 32).values.min()
    expected = {(t, i) for t, i in torch.nonzero((z >= tau) & (z > 0)).tolist()}
    assert {(int(t), int(i)) for t, i in zip(tokens, indices)} == expected
    assert len(expected) >= 3 * 32


def _batch_topk_by_definition(z, k):
    """{(token, latent): value} of the entries of ReLU(z) at or above its (k·B)-th largest."""
    tau = torch.relu(z.float()).flatten().topk(k * z.shape[0]).values.min()
    return {(t, i): float(z[t, i]) for t, i in torch.nonzero((z.float() >= tau) & (z > 0)).tolist()}


@pytest.mark.parametrize(
    "case", ["random", "sample_sees_only_large", "sample_sees_only_small", "few_positive", "odd_size"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_topk_selection_does_not_depend_on_its_threshold_estimate(case, dtype):
    """The threshold is estimated from a strided sample; where the sample misleads (the
    sampled entries all larger, or all smaller, than the rest; fewer positive entries than
    k·B), the result must still be the exact BatchTopK selection."""
    from saekit.sae.selection import batch_topk_entries

    generator = torch.Generator().manual_seed(2)
    batch, d_sae, k = 64, 501 if case == "odd_size" else 500, 40  # k·B = 2560: the sample is every 3rd entry
    z = torch.randn(batch, d_sae, generator=generator)
    flat = z.view(-1)
    if case == "sample_sees_only_large":
        flat[::3] += 100.0
    elif case == "sample_sees_only_small":
        flat[::3] -= 100.0
    elif case == "few_positive":
        z -= 3.0  # about 0.1% of the entries stay positive, far fewer than k·B
    z = z.to(dtype)
    values, indices, tokens = batch_topk_entries(z, k)
    got = {(int(t), int(i)): float(v) for t, i, v in zip(tokens, indices, values)}
    assert got == _batch_topk_by_definition(z, k)
    assert torch.equal(tokens, tokens.sort().values)


@pytest.mark.parametrize("layout", ["per_token", "flat"])
def test_embedding_bag_in_chunks_equals_one_call(layout, monkeypatch):
    """The split that keeps each GPU gather under GATHER_LIMIT entries × d_in (run here on
    the CPU with a small limit): same sum, same gradients."""
    import torch.nn.functional as F

    from saekit.sae import sparse_decode as sd

    generator = torch.Generator().manual_seed(3)
    W = torch.randn(50, 8, generator=generator, requires_grad=True)
    if layout == "per_token":
        indices, offsets = torch.randint(50, (37, 5), generator=generator), None
    else:
        counts = torch.randint(0, 9, (37,), generator=generator)
        indices = torch.randint(50, (int(counts.sum()),), generator=generator)
        offsets = torch.cumsum(counts, 0) - counts
    values = torch.rand(indices.shape, generator=generator, requires_grad=True)
    expected = F.embedding_bag(indices, W, offsets, per_sample_weights=values, mode="sum")
    grads = torch.autograd.grad(expected.pow(2).sum(), (values, W))
    monkeypatch.setattr(sd, "GATHER_LIMIT", 8 * 11)  # 11 entries a call
    got = sd._embedding_bag_in_chunks(values, indices, W, offsets)
    torch.testing.assert_close(got, expected)
    for g_got, g_expected in zip(torch.autograd.grad(got.pow(2).sum(), (values, W)), grads):
        torch.testing.assert_close(g_got, g_expected)


# ---- Matryoshka BatchTopK and transcoders ------------------------------------------------------------
def reference_matryoshka(p, x, k, ends, weights):
    """BatchTopK's selection; every prefix f[:, :e] W_dec[:e] + b_dec reconstructs x."""
    z = torch.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    keep = z.flatten().topk(k * x.shape[0]).indices
    mask = torch.zeros(z.numel(), dtype=torch.bool)
    mask[keep] = True
    f = z * mask.view_as(z)
    return sum(w * mse(x, f[:, :e] @ p["W_dec"][:e] + p["b_dec"]) for e, w in zip(ends, weights))


@pytest.mark.parametrize(
    "groups,weights",
    [({"group_sizes": [4, 12, 24]}, None), ({"group_sizes": [10, 30]}, [0.8, 0.2]), ({}, None)],
)
def test_matryoshka_batchtopk(groups, weights):
    sae = randomise(saekit.create("matryoshka_batchtopk", d_in=D_IN, d_sae=D_SAE, k=5, group_weights=weights, **groups))
    ends = sae.group_ends
    assert ends[-1] == D_SAE and len(ends) == (len(groups["group_sizes"]) if groups else 4)
    w = weights or [1 / len(ends)] * len(ends)
    check_gradients(sae, lambda p, x: reference_matryoshka(p, x, 5, ends, w), torch.randn(BATCH, D_IN))


@pytest.mark.parametrize("reconstruction_loss", ["sum", "mean"])
def test_matryoshka_prefix_errors_match_autograd(reconstruction_loss):
    """The fused prefix errors (one residual per group, walked back in backward) against the
    plain cumulative sum, at a width where the mean reduction differs from the sum."""
    from saekit.sae.matryoshka import _PrefixErrors

    generator = torch.Generator().manual_seed(0)
    residual = torch.randn(BATCH, 9, generator=generator, requires_grad=True)
    parts = torch.randn(3, BATCH, 9, generator=generator, requires_grad=True)
    upstream = torch.tensor([0.5, 0.2, 0.3])
    per_d = 1.0 if reconstruction_loss == "sum" else 1 / 9
    errors, left = _PrefixErrors.apply(residual, parts, per_d)
    (errors * upstream).sum().backward()
    got = (errors.detach(), left, residual.grad.clone(), parts.grad.clone())
    residual.grad = parts.grad = None
    prefixes = residual - parts.cumsum(0)
    expected_errors = prefixes.pow(2).sum(-1).mean(-1) * per_d
    (expected_errors * upstream).sum().backward()
    torch.testing.assert_close(got[0], expected_errors.detach())
    torch.testing.assert_close(got[1], prefixes[-1].detach())
    torch.testing.assert_close(got[2], residual.grad)
    torch.testing.assert_close(got[3], parts.grad)


def test_matryoshka_with_one_group_is_batchtopk():
    x = torch.randn(BATCH, D_IN)
    one = randomise(saekit.create("matryoshka_batchtopk", d_in=D_IN, d_sae=D_SAE, k=5, group_sizes=[D_SAE]))
    plain = randomise(saekit.create("batchtopk", d_in=D_IN, d_sae=D_SAE, k=5))
    torch.testing.assert_close(one.loss(x).loss, plain.loss(x).loss)


D_OUT = 7


def transcoder_reference(p, x, y, k, skip):
    """A TopK transcoder: z = x W_enc + b_enc (no b_dec subtracted), ŷ = f W_dec + b_dec (+ x W_skipᵀ)."""
    z = x @ p["W_enc"] + p["b_enc"]
    top = z.topk(k, dim=-1)
    f = torch.zeros_like(z).scatter(-1, top.indices, torch.relu(top.values))
    y_hat = f @ p["W_dec"] + p["b_dec"]
    if skip:
        y_hat = y_hat + x @ p["W_skip"].t()
    return mse(y, y_hat)


def check_pair_gradients(sae, reference_loss, x, y):
    p = params(sae)
    expected = reference_loss(p, x, y)
    expected.backward()
    sae.zero_grad()
    actual = sae.loss(x, target=y).loss
    actual.backward()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for name, param in sae.named_parameters():
        torch.testing.assert_close(param.grad, p[name].grad, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


@pytest.mark.parametrize("transcoder", [True, "skip"])
def test_topk_transcoder(transcoder):
    sae = randomise(saekit.create("topk", d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, k=5, transcoder=transcoder))
    assert sae.W_dec.shape == (D_SAE, D_OUT) and (transcoder != "skip" or sae.W_skip.shape == (D_OUT, D_IN))
    x, y = torch.randn(BATCH, D_IN), torch.randn(BATCH, D_OUT)
    check_pair_gradients(sae, lambda p, x, y: transcoder_reference(p, x, y, 5, transcoder == "skip"), x, y)
    torch.testing.assert_close(sae(x), sae.decode(sae.encode(x)) + (x @ sae.W_skip.t() if transcoder == "skip" else 0))


def test_relu_skip_transcoder():
    lam = 0.4
    sae = randomise(saekit.create("relu", d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, l1_coefficient=lam, transcoder="skip"))
    x, y = torch.randn(BATCH, D_IN), torch.randn(BATCH, D_OUT)

    def reference(p, x, y):
        f = torch.relu(x @ p["W_enc"] + p["b_enc"])
        y_hat = f @ p["W_dec"] + p["b_dec"] + x @ p["W_skip"].t()
        return mse(y, y_hat) + lam * f.abs().sum(-1).mean()

    check_pair_gradients(sae, reference, x, y)


def test_matryoshka_skip_transcoder():
    sae = saekit.create(
        "matryoshka_batchtopk", d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, k=5, group_sizes=[8, 32], transcoder="skip"
    )
    sae = randomise(sae)
    x, y = torch.randn(BATCH, D_IN), torch.randn(BATCH, D_OUT)

    def reference(p, x, y):
        z = torch.relu(x @ p["W_enc"] + p["b_enc"])
        keep = z.flatten().topk(5 * BATCH).indices
        f = (z.flatten() * torch.zeros(z.numel()).index_fill(0, keep, 1.0)).view_as(z)
        skip = x @ p["W_skip"].t()
        return sum(0.5 * mse(y, f[:, :e] @ p["W_dec"][:e] + p["b_dec"] + skip) for e in (8, 40))

    check_pair_gradients(sae, reference, x, y)
