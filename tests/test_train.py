"""The trainer: exact resume, schedules, bf16 autocast, refusal to clobber a run."""

from __future__ import annotations

import json

import pytest
import torch

import saekit
from saekit._runtime.errors import FolderError
from saekit.data.source import TensorSource
from saekit.data.synthetic import make_toy
from saekit.training.config import TrainConfig


@pytest.fixture(scope="module")
def toy_x():
    torch.set_num_threads(1)
    return make_toy(16, 48, expected_l0=3, seed=3).sample(8192, seed=4)


class Interrupted(Exception):
    pass


class InterruptAfter(TensorSource):
    """The training stream (seed 0) raises after `limit` batches, as a crash or ^C would."""

    def __init__(self, x, limit):
        super().__init__(x)
        self.limit = limit

    def batches(self, batch_size, *, seed=0, **kw):
        for served, batch in enumerate(super().batches(batch_size, seed=seed, **kw)):
            if seed == 0 and served == self.limit:
                raise Interrupted
            yield batch


RESUME_CASES = {
    "topk": {"k": 3, "dead_tokens": 2000},  # AuxK and dead-latent counters
    "jumprelu": {"target_l0": 3},  # the controller's coefficient
    "batchtopk": {"k": 3},  # the running threshold
    "gated": {"l1_coefficient": 0.5},
}


@pytest.mark.parametrize("arch", list(RESUME_CASES))
def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, toy_x, arch):
    options = dict(
        steps=60, batch_size=256, lr=3e-3, precision="float32", progress=False, checkpoint_every=20, log_every=10
    )
    whole = saekit.train(
        saekit.create(arch, d_in=16, d_sae=64, seed=1, **RESUME_CASES[arch]), toy_x, out=tmp_path / "a", **options
    )

    with pytest.raises(Interrupted):
        # Interrupted after 45 steps: the resume restarts from the checkpoint of step 40.
        saekit.train(
            saekit.create(arch, d_in=16, d_sae=64, seed=1, **RESUME_CASES[arch]),
            InterruptAfter(toy_x, limit=45),
            out=tmp_path / "b",
            **options,
        )
    state = json.loads((tmp_path / "b" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 40
    with pytest.raises(FolderError, match="initial_weights"):  # another initialisation is another run
        saekit.train(
            saekit.create(arch, d_in=16, d_sae=64, seed=99, **RESUME_CASES[arch]), toy_x, out=tmp_path / "b", **options
        )
    resumed = saekit.train(
        saekit.create(arch, d_in=16, d_sae=64, seed=1, **RESUME_CASES[arch]), toy_x, out=tmp_path / "b", **options
    )
    for name, tensor in whole.sae.state_for_save().items():
        torch.testing.assert_close(resumed.sae.state_for_save()[name], tensor, rtol=0, atol=0, msg=name)
    log_a = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log_b] == [entry["step"] for entry in log_a] == list(range(10, 61, 10))


def test_an_earlier_saekits_unfinished_run_resumes_where_its_settings_still_hold(tmp_path, toy_x):
    """A folder whose identity an earlier saekit wrote (options of other architectures at
    their old defaults, a newer option absent) resumes; one whose architecture's own option
    had another default is refused, with the difference named."""
    options = dict(steps=60, batch_size=256, lr=3e-3, precision="float32", progress=False, checkpoint_every=20)

    def interrupted(arch, folder, **sparsity):
        with pytest.raises(Interrupted):
            saekit.train(saekit.create(arch, d_in=16, d_sae=64, seed=1, **sparsity), InterruptAfter(toy_x, 45),
                         out=folder, **options)  # fmt: skip
        manifest = folder / "saekit.json"
        saved = json.loads(manifest.read_text())
        sae = saved["identity"]["sae"]
        sae.pop("aux_dead_batches", None)  # added since
        sae.update(aux_k=None, aux_coefficient=1 / 32, decoder_norm="unit", jumprelu_bandwidth=0.05)
        manifest.write_text(json.dumps(saved))

    interrupted("jumprelu", tmp_path / "j", target_l0=3)
    resumed = saekit.train(saekit.create("jumprelu", d_in=16, d_sae=64, seed=1, target_l0=3), toy_x,
                           out=tmp_path / "j", **options)  # fmt: skip
    assert resumed.steps == 60
    interrupted("topk", tmp_path / "t", k=3)
    with pytest.raises(FolderError, match=r"sae.aux_coefficient: 0.03125 -> 1.0"):
        saekit.train(saekit.create("topk", d_in=16, d_sae=64, seed=1, k=3), toy_x, out=tmp_path / "t", **options)


def test_a_finished_run_is_not_touched_without_resume(tmp_path, toy_x):
    options = dict(steps=5, batch_size=256, progress=False)
    saekit.train(saekit.create("topk", d_in=16, d_sae=32, k=2), toy_x, out=tmp_path, **options)
    with pytest.raises(FolderError, match="resume=True"):
        saekit.train(saekit.create("topk", d_in=16, d_sae=32, k=2), toy_x, out=tmp_path, resume=False, **options)
    with pytest.raises(FolderError, match="train.batch_size: 256 -> 128"):
        saekit.train(
            saekit.create("topk", d_in=16, d_sae=32, k=2), toy_x, out=tmp_path, **{**options, "batch_size": 128}
        )
    with pytest.raises(FolderError, match="sae.k: 2 -> 3"):
        saekit.train(saekit.create("topk", d_in=16, d_sae=32, k=3), toy_x, out=tmp_path, **options)


def test_schedules():
    cfg = TrainConfig(steps=100, lr=1.0, lr_warmup_fraction=0.1, lr_decay_start=0.8, sparsity_warmup_fraction=0.2)
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(50) == 1.0 and cfg.lr_at(90) == pytest.approx(0.5) and cfg.lr_at(99) == pytest.approx(0.05)
    assert cfg.sparsity_scale_at(0) == pytest.approx(0.05) and cfg.sparsity_scale_at(19) == 1.0
    with pytest.raises(ValueError, match="lr must be"):
        TrainConfig(lr=-1)


def test_auto_learning_rate_and_clip_come_from_the_architecture(toy_x, tmp_path):
    """lr and grad_clip "auto" (the defaults) take the SAE's recommendations — TopK family
    1.5e-3·√(4608 / d_sae) without clipping, jumprelu and relu at that rate clipped at 1, gated at 2/3 of it —
    given values are kept, and a run folder records the values it trained with."""
    from saekit.training.trainer import Trainer

    cases = [
        (saekit.create("topk", d_in=16, d_sae=1152, k=2), {}, 3e-3, None),
        (saekit.create("batchtopk", d_in=16, d_sae=4608, k=2), {}, 1.5e-3, None),
        (saekit.create("relu", d_in=16, d_sae=4608, l1_coefficient=1.0), {}, 1.5e-3, 1.0),
        (saekit.create("gated", d_in=16, d_sae=1152, target_l0=2), {}, 2e-3, 1.0),
        (saekit.create("jumprelu", d_in=16, d_sae=4608, target_l0=2), {}, 1.5e-3, 1.0),
        (saekit.create("jumprelu", d_in=16, d_sae=64, target_l0=2), {"lr": 1e-2, "grad_clip": 0.5}, 1e-2, 0.5),
        (saekit.create("topk", d_in=16, d_sae=64, k=2), {"grad_clip": None}, 1.5e-3 * 72**0.5, None),
    ]
    for sae, options, lr, clip in cases:
        trainer = Trainer(sae, toy_x, steps=2, batch_size=64, progress=False, **options)
        assert trainer.cfg.lr == pytest.approx(lr) and trainer.cfg.grad_clip == clip, sae.arch
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
        trainer.close()
    options = dict(steps=2, batch_size=64, progress=False)
    relu = dict(d_in=16, d_sae=4608, l1_coefficient=1.0)
    saekit.train(saekit.create("relu", **relu), toy_x, out=tmp_path, **options)
    with pytest.raises(FolderError, match="train.lr: 0.0015 -> 0.001"):
        saekit.train(saekit.create("relu", **relu), toy_x, out=tmp_path, **options, lr=1e-3)


def test_each_parameter_trains_at_its_own_rate(toy_x):
    """W_enc trains at encoder_lr_scale times the lr (by default its architecture's: 0.7 for
    TopK, 1 for the others) and W_dec at decoder_lr_scale (1 by default), the biases at the
    lr, JumpReLU's θ at √d_in times it. Adam's first step moves every entry whose gradient is
    not zero by its group's rate (m̂/√v̂ = ±1), which is what is checked on the encoder."""
    from saekit.training.trainer import Trainer

    cases = [
        ("topk", dict(k=2), {}, {"W_enc": 0.7, "W_dec": 1.0, "b_enc": 1.0, "b_dec": 1.0}),
        ("topk", dict(k=2), {"encoder_lr_scale": 1.0}, {"W_enc": 1.0, "W_dec": 1.0, "b_enc": 1.0}),
        ("batchtopk", dict(k=2), {}, {"W_enc": 1.0, "W_dec": 1.0, "b_enc": 1.0}),
        ("matryoshka_batchtopk", dict(k=2), {}, {"W_enc": 1.0, "W_dec": 1.0}),
        ("batchtopk", dict(k=2), {"encoder_lr_scale": 0.5, "decoder_lr_scale": 1.5}, {"W_enc": 0.5, "W_dec": 1.5}),
        ("jumprelu", dict(target_l0=2), {}, {"W_enc": 1.0, "W_dec": 1.0, "threshold": 4.0}),
        ("relu", dict(l1_coefficient=1.0), {"decoder_lr_scale": 2.0}, {"W_enc": 1.0, "W_dec": 2.0}),
    ]
    for arch, sparsity, options, expected in cases:
        sae = saekit.create(arch, d_in=16, d_sae=64, **sparsity)
        trainer = Trainer(
            sae, toy_x, steps=10, batch_size=64, lr=1e-3, lr_warmup_fraction=0, grad_clip=None, progress=False,
            precision="float32", **options,
        )  # fmt: skip
        before = sae.W_enc.detach().clone()
        trainer.step(toy_x[:64])
        rate = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
        named = dict(sae.named_parameters())
        for name, scale in expected.items():
            assert rate[id(named[name])] == pytest.approx(1e-3 * scale), (arch, name)
        moved = (sae.W_enc.detach() - before).abs()
        assert moved[moved > 0].median() == pytest.approx(1e-3 * expected["W_enc"], rel=1e-3), arch
        trainer.close()
    # At 1 (what saekit trained with before the scales existed) they stay out of a run's
    # identity, so that its older folders resume; another value is in it, and "auto" is
    # recorded as the value it stands for.
    relu = saekit.create("relu", d_in=16, d_sae=64, l1_coefficient=1.0)
    topk = saekit.create("topk", d_in=16, d_sae=64, k=2)
    assert "encoder_lr_scale" not in TrainConfig().for_sae(relu).identity()
    assert TrainConfig().for_sae(topk).identity()["encoder_lr_scale"] == 0.7
    assert "encoder_lr_scale" not in TrainConfig(encoder_lr_scale=1.0).for_sae(topk).identity()
    assert TrainConfig(encoder_lr_scale=0.5).for_sae(relu).identity()["encoder_lr_scale"] == 0.5


def test_wrong_width_is_a_clear_error(toy_x):
    with pytest.raises(ValueError, match="d_in=16 but the SAE was made for d_in=20"):
        saekit.train(saekit.create("topk", d_in=20, d_sae=32, k=2), toy_x, steps=1, progress=False)


def test_activation_scale_is_folded_into_the_weights(toy_x):
    raw = toy_x * 37.0  # far from the √d_in mean norm the trainer works at
    result = saekit.train(
        saekit.create("topk", d_in=16, d_sae=64, k=3),
        raw,
        steps=200,
        batch_size=256,
        lr=3e-3,
        precision="float32",
        progress=False,
    )
    expected_scale = 16**0.5 / float(raw.norm(dim=1).mean())
    assert result.activation_scale == pytest.approx(expected_scale, rel=0.05)
    assert result.sae.cfg.activation_scale == pytest.approx(result.activation_scale)
    metrics = saekit.evaluate(result.sae, raw)  # the saved SAE reads raw activations
    assert metrics["explained_variance"] > 0.7


@pytest.mark.parametrize("transcoder", [False, True])
def test_b_dec_starts_at_the_mean_of_the_scaled_targets(transcoder):
    """Every coordinate of b_dec starts at its own mean (in the trainer's scaled units),
    not at one number broadcast into all of them."""
    from saekit.training.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    offset = torch.linspace(-40.0, 90.0, 12)  # a mean far from 0 and different in every coordinate
    x = torch.randn(4096, 12, generator=g) * 3 + offset
    y = torch.randn(4096, 12, generator=g) * 2 - offset.flip(0)
    sae = saekit.create("topk", d_in=12, d_sae=24, k=2, transcoder=transcoder)
    trainer = Trainer(
        sae,
        (x, y) if transcoder else x,
        steps=1,
        batch_size=1024,
        normalization_tokens=4096,
        progress=False,
        device="cpu",
    )
    target, scale = (y, trainer.target_scale) if transcoder else (x, trainer.scale)
    assert scale == pytest.approx(12**0.5 / float(target.norm(dim=1).mean()), rel=0.05)
    torch.testing.assert_close(sae.b_dec.detach(), target.mean(0) * scale, rtol=0.02, atol=0.02 * scale)


def test_init_b_dec_refuses_a_sample_in_place_of_its_mean():
    sae = saekit.create("topk", d_in=4, d_sae=8, k=1)
    with pytest.raises(ValueError, match="mean vector of shape"):
        sae.init_b_dec(torch.ones(10, 4))


@pytest.mark.parametrize(
    "arch, options",
    [
        ("relu", {"l1_coefficient": 0.3}),
        ("gated", {"l1_coefficient": 0.3}),
        ("jumprelu", {"l0_coefficient": 0.05}),
        ("topk", {"k": 3}),
        ("batchtopk", {"k": 3}),
    ],
)
def test_bf16_autocast_matches_float32_quality(toy_x, arch, options):
    """bf16 autocast with float32 master weights ends within 0.5 points of explained variance
    of float32, on average over three seeds: one run's result moves by about that much with
    the order of float32 sums alone (a different CPU's matmul kernels), so a single pair
    would test the noise, not the precision. (JumpReLU at a fixed λ: with a target L0 the
    controller's step-by-step choice of which thresholds to raise amplifies any rounding
    difference, and three seeds no longer average it out.)"""
    train_options = dict(steps=600, batch_size=512, lr=3e-3, progress=False)
    ev = {}
    for precision in ("float32", "bfloat16"):
        runs = []
        for seed in (2, 3, 4):
            sae = saekit.train(
                saekit.create(arch, d_in=16, d_sae=64, seed=seed, **options),
                toy_x,
                precision=precision,
                **train_options,
            ).sae
            assert sae.W_dec.dtype == torch.float32  # master weights stay float32
            runs.append(saekit.evaluate(sae, toy_x)["explained_variance"])
        ev[precision] = sum(runs) / len(runs)
    assert ev["float32"] > 0.5
    assert ev["bfloat16"] == pytest.approx(ev["float32"], abs=0.005)


def test_trains_from_any_iterable_of_batches(toy_x):
    batches = [toy_x[i : i + 100] for i in range(0, 8000, 100)]  # uneven chunks, re-cut to the batch size
    result = saekit.train(
        saekit.create("topk", d_in=16, d_sae=64, k=3), batches, steps=100, batch_size=256, lr=3e-3, progress=False
    )
    assert saekit.evaluate(result.sae, toy_x)["explained_variance"] > 0.5


SPARSE_PATH_CASES = {
    "relu": {"l1_coefficient": 0.3},
    "gated": {"l1_coefficient": 0.3},
    "jumprelu": {"l0_coefficient": 0.05},
}
"""Fixed coefficients: the target-L0 controller raises the thresholds of the features that
fired in each batch, a discrete choice that turns summation-order differences into
different runs."""


@pytest.mark.parametrize("arch", list(SPARSE_PATH_CASES))
def test_sparse_and_dense_training_paths_train_the_same_sae(toy_x, arch):
    """The sparse path computes the dense path's loss and gradients from the active entries
    alone: the two runs differ only by float32 summation order."""
    options = dict(steps=40, batch_size=256, lr=3e-3, precision="float32", progress=False)
    runs = {}
    for name, sparse_below in {"dense": 0.0, "sparse": 2.0}.items():
        sae = saekit.create(arch, d_in=16, d_sae=64, seed=1, **SPARSE_PATH_CASES[arch])
        sae.sparse_below = sparse_below
        runs[name] = saekit.train(sae, toy_x, **options)
    for name, tensor in runs["dense"].sae.state_for_save().items():
        torch.testing.assert_close(runs["sparse"].sae.state_for_save()[name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    assert runs["sparse"].history[-1]["l0"] == pytest.approx(runs["dense"].history[-1]["l0"], rel=0.02)


def test_the_trainer_takes_the_sparse_path_when_few_features_fire(toy_x, monkeypatch):
    """A fresh SAE fires half its features and trains densely; one calibrated to a target
    L0 of 3 of 256 (1%) takes the sparse path from its second step on, to the same quality."""
    from saekit.sae.relu import ReluSAE

    paths = []
    sparse_loss = ReluSAE._sparse_loss
    monkeypatch.setattr(
        ReluSAE, "_sparse_loss", lambda self, *a, **kw: paths.append("sparse") or sparse_loss(self, *a, **kw)
    )
    options = dict(steps=300, batch_size=256, lr=3e-3, progress=False, log_every=10)
    fresh = saekit.create("relu", d_in=16, d_sae=256, seed=1, l1_coefficient=1e-4)
    saekit.train(fresh, toy_x, **{**options, "steps": 5})
    assert paths == []  # half the features fire: dense
    result = saekit.train(saekit.create("relu", d_in=16, d_sae=256, seed=1, target_l0=3), toy_x, **options)
    assert len(paths) == 299 and result.history[-1]["l0"] < 0.04 * 256  # the first step has no L0 yet to go by
    dense = saekit.create("relu", d_in=16, d_sae=256, seed=1, target_l0=3)
    dense.sparse_below = 0.0
    dense = saekit.train(dense, toy_x, **options).sae
    quality = [saekit.evaluate(sae, toy_x)["explained_variance"] for sae in (result.sae, dense)]
    assert quality[0] == pytest.approx(quality[1], abs=0.005)


def test_a_step_leaves_no_autograd_graph_behind(toy_x):
    """The optimiser-step hooks run without autograd: a gradient that carried a graph would
    keep every step's graph alive (a leak of a decoder's size per step)."""
    import gc

    from saekit.training.trainer import Trainer

    for sae in (
        saekit.create("topk", d_in=16, d_sae=64, k=2),
        saekit.create("relu", d_in=16, d_sae=64, l1_coefficient=1),
    ):
        trainer = Trainer(sae, toy_x, steps=40, batch_size=64, progress=False, precision="float32")
        counts = []
        for i in range(30):
            trainer.step(toy_x[(i % 8) * 64 : (i % 8 + 1) * 64])
            assert all(p.grad is None or p.grad.grad_fn is None for p in sae.parameters()), sae.arch
            if i in (9, 29):
                gc.collect()
                counts.append(sum(1 for o in gc.get_objects() if torch.is_tensor(o) and o.requires_grad))
        assert counts[0] == counts[1], (sae.arch, counts)
        trainer.close()


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_infers_with_its_last_batch_threshold(toy_x, arch, monkeypatch):
    """After the last step θ is the smallest of the k·B largest activations of the last
    batch at the final weights, not the running mean that lags it: per-token inference on
    that batch fires k·B entries (the smallest of them sits at θ, which z > θ leaves out)."""
    seen = []
    settle = saekit.sae.batchtopk.BatchTopKSAE.settle_for_inference

    def spy(self, x):
        seen.append(x.clone())
        settle(self, x)

    monkeypatch.setattr(saekit.sae.batchtopk.BatchTopKSAE, "settle_for_inference", spy)
    k, batch = 3, 512
    sae = saekit.create(arch, d_in=16, d_sae=64, k=k, seed=0)
    result = saekit.train(sae, toy_x, steps=80, batch_size=batch, lr=3e-3, precision="float32", progress=False)
    assert len(seen) == 1 and seen[0].shape == (batch, 16)  # once, on the whole last batch
    last = seen[0] / result.activation_scale  # the SAE reads raw activations once trained
    with torch.no_grad():
        fired = int((sae.encode(last) > 0).sum())
        z = sae.pre_activations(last)
    assert k * batch - 3 <= fired <= k * batch, fired
    # (the running mean it replaces fired 1,896 entries of these 1,536 when measured)
    assert float(sae.threshold) == pytest.approx(float(z.flatten().topk(k * batch).values[-1]), rel=1e-4)


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu sse avx2 avx512f avx512bw avx512_vnni", False), ("avx512f avx512bw avx512_bf16", True), ("amx_bf16", True)],
)
def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch, toy_x, flags, native):
    """oneDNN accepts bf16 on plain AVX-512 and emulates it, ~5× slower than float32 (a
    Xeon without AVX-512 BF16: 62 against 310 GFLOP/s), so "auto" must not pick it there;
    the model loader and the trainer follow the same rule."""
    from saekit._runtime import precision
    from saekit.data.model import resolve_dtype
    from saekit.training.trainer import Trainer

    monkeypatch.setattr(precision, "_cpuinfo", lambda: f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    precision.cpu_has_native_bf16.cache_clear()
    try:
        cpu = torch.device("cpu")
        assert precision.bf16_is_fast(cpu) is native
        assert resolve_dtype(None, cpu) == (torch.bfloat16 if native else torch.float32)
        sae = saekit.create("topk", d_in=toy_x.shape[1], d_sae=32, k=4)
        assert Trainer(sae, toy_x, steps=2, batch_size=64, progress=False, device="cpu").use_bf16 is native
        forced = Trainer(sae, toy_x, steps=2, batch_size=64, progress=False, device="cpu", precision="bfloat16")
        assert forced.use_bf16  # an explicit choice is kept, fast or not
    finally:
        precision.cpu_has_native_bf16.cache_clear()
