"""SparseAutoencoder: the part every architecture shares.

An SAE maps an activation x ∈ R^n to features f ∈ R^M_{≥0} and back:

    x̃ = x − b_dec                      (pre-encoder subtraction of the decoder bias)
    f = σ(x̃ W_enc + b_enc)             (σ differs per architecture)
    x̂ = (s ⊙ f) W_dec + b_dec          (s: optional per-feature scale, fitted by fit_scale)

A transcoder (``transcoder=True``) reads x and predicts another activation y of width
d_out: x̃ = x (no b_dec subtracted; b_dec lives in y's space), ŷ = (s ⊙ f) W_dec + b_dec,
and a skip transcoder (``"skip"``) adds x W_skipᵀ. The loss then compares ŷ with y.

Tensor names and layouts follow SAELens so that other tools can read what saekit
writes: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``,
``W_skip [d_out, d_in]``.
A subclass implements ``encode`` and ``loss``; everything else (decoding, the
decoder-norm constraint, firing statistics, folding the activation scale,
saving) lives here so that the trainer never asks which architecture it trains.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from .config import ConfigError, SAEConfig
from .sparse_decode import Active, sparse_decode

SPARSITY_FIELDS = ("l1_coefficient", "l0_coefficient", "target_l0", "k")
"""SAEConfig fields that set sparsity; each architecture uses some of them."""
OPTION_FIELDS = (
    "decoder_norm",
    "jumprelu_bandwidth",
    "jumprelu_init_threshold",
    "aux_k",
    "aux_coefficient",
    "aux_dead_batches",
    "batchtopk_threshold_momentum",
    "group_sizes",
    "group_fractions",
    "group_weights",
)
"""SAEConfig fields that only some architectures use (declared in each class's ``options``)."""


class LossOutput(NamedTuple):
    """What one training forward pass returns."""

    loss: Tensor
    """Scalar total loss that the optimiser minimises."""
    parts: dict[str, Tensor]
    """Named scalar terms: "reconstruction", "sparsity", "auxiliary" (those that apply),
    each already multiplied by its coefficient, so that they add up to ``loss``."""
    x_hat: Tensor
    """x̂: [batch, d_in]."""
    l0: Tensor
    """Scalar: mean number of active features per token in this batch."""
    fired: Tensor
    """[d_sae] bool: whether each feature was active on any token of this batch. (Sparse
    architectures report these two without materialising the dense [batch, d_sae] f.)"""

    @classmethod
    def from_features(cls, loss: Tensor, parts: dict[str, Tensor], f: Tensor, x_hat: Tensor) -> LossOutput:
        with torch.no_grad():
            # f ≥ 0, so active is f ≠ 0. These three are the fast kernels for it on CPU
            # (a comparison or a per-column count over [batch, d_sae] is several times slower).
            active = f.reshape(-1, f.shape[-1]).bool()
            l0 = torch.count_nonzero(active).float() / active.shape[0]
            return cls(loss, parts, x_hat, l0, active.view(torch.uint8).amax(0).bool())

    @classmethod
    def from_entries(
        cls, loss: Tensor, parts: dict[str, Tensor], x_hat: Tensor, latents: Tensor, active: Tensor, d_sae: int
    ) -> LossOutput:
        """For the sparse paths: from the latent of each of the batch's entries and whether
        it is active (bool, same shape: [n] or [B, k]), without boolean indexing (on a GPU
        that waits for the device)."""
        with torch.no_grad():
            hits = torch.zeros(d_sae, device=latents.device).index_add_(
                0, latents.reshape(-1), active.reshape(-1).float()
            )
            fired = hits > 0
            l0 = active.sum(dtype=torch.float32) / x_hat.shape[0]
            return cls(loss, parts, x_hat, l0, fired)


def overwritable(grad: Tensor) -> Tensor:
    """An incoming gradient a fused backward may write its result into: itself when it is a
    plain dense tensor (a fresh product nothing else reads), else a dense copy (an
    expanded view, such as the gradient of a sum, must never be written into)."""
    return grad if grad.is_contiguous() else grad.contiguous()


def width_scaled_lr(d_sae: int) -> float:
    """1.5e-3·√(4608 / d_sae): the learning rate measured best at 4,608 latents (sae/topk.py,
    sae/jumprelu.py), scaled by the inverse square root of the width as sparsify and
    dictionary_learning scale theirs."""
    return 1.5e-3 * (4608 / d_sae) ** 0.5


class SparseAutoencoder(nn.Module):
    # ---- what an architecture is (read by sae/registry.py, the CLI, the sweep, validation)
    arch: ClassVar[str]
    """Its name in configs, on the command line and in cfg.json."""
    summary: ClassVar[str] = ""
    """One line: how features are computed and what the sparsity term is."""
    coefficient_name: ClassVar[str | None] = None
    """Config field holding the sparsity coefficient, for architectures with a penalty;
    None for those whose sparsity is set by k."""
    threshold_kind: ClassVar[Literal["per_feature", "scalar"] | None] = None
    """Whether features pass a threshold θ at inference: learned per feature (JumpReLU) or
    one running value (BatchTopK)."""
    options: ClassVar[tuple[str, ...]] = ()
    """The fields of OPTION_FIELDS this architecture uses."""
    unit_norm_decoder: ClassVar[bool] = True
    """Whether decoder rows are held at unit norm during training."""
    encoder_init_scale: ClassVar[float] = 1.0
    """An SAE's encoder starts as this multiple of the decoder's transpose."""
    default_grad_clip: ClassVar[float | None] = 1.0
    """The trainer's global gradient-norm clip when none is given (TrainConfig.grad_clip
    "auto"); None: no clipping."""
    default_encoder_lr_scale: ClassVar[float] = 1.0
    """W_enc's learning rate as a multiple of the trainer's when none is given
    (TrainConfig.encoder_lr_scale "auto")."""
    sparse_below: float = 0.04
    """Architectures with a sparse training path (relu, gated, jumprelu) take it on CPU once
    the last training batch had fewer than this share of its [batch, d_sae] entries active:
    the decoder and every backward product then touch only the active entries
    (sparse_decode.py). Dense matmuls win above it; 0 turns the sparse path off, and any
    value above 1 takes it on every device from the first step (tests)."""

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.check_config(cfg)
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out or cfg.d_in
        # Decoder rows: random unit directions; an SAE's encoder starts as their transpose,
        # so that at initialisation every feature reads the direction it writes. A
        # transcoder reads and writes different spaces: its encoder columns are drawn apart.
        W_dec = torch.randn(d_sae, d_out, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        if cfg.transcoder:
            W_enc = torch.randn(d_in, d_sae, generator=generator)
            self.W_enc = nn.Parameter(W_enc / W_enc.norm(dim=0, keepdim=True))
        else:
            self.W_enc = nn.Parameter(W_dec.t() * self.encoder_init_scale)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if cfg.transcoder == "skip":
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in))
        if cfg.feature_scale:
            self.add_feature_scale()
        self._register_training_state()
        self._norm_state: tuple[Tensor, Tensor] | None = None  # input_normalization's, from the last encode

    def _register_training_state(self) -> None:
        """The buffers that training moves and sae_weights.safetensors does not hold."""
        if self.coefficient_name is not None:
            start = getattr(self.cfg, self.coefficient_name)
            if start is None:
                start = self.default_coefficient()
            # A buffer, not a config value: the target-L0 controller moves it during
            # training and it must travel with checkpoints.
            self.register_buffer("sparsity_coefficient", torch.tensor(float(start)))
        # Tokens since each feature last fired; persistent=False keeps it out of the
        # SAELens-compatible weights file (the trainer checkpoints it separately).
        self.register_buffer("tokens_since_fired", torch.zeros(self.cfg.d_sae, dtype=torch.long), persistent=False)
        self._active_share = 1.0  # of the last training batch's [batch, d_sae] entries
        self.batch_tokens = 0
        """Tokens in the last (global) training batch, 0 before the first: windows counted
        in batches (AuxK's) read it; checkpoints carry it."""

    # ---- validation ----------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: SAEConfig) -> None:
        """Raise ConfigError if ``cfg`` does not describe an SAE of this architecture: its
        sparsity must be set the way this architecture sets it, and fields it does not use
        must be left at their defaults."""
        if cfg.arch != cls.arch:
            raise ConfigError(f"arch={cfg.arch!r} given to the {cls.arch} architecture.", field="arch", value=cfg.arch)
        unused = set(SPARSITY_FIELDS)
        if cls.coefficient_name is not None:
            unused -= {cls.coefficient_name, "target_l0"}
            coefficient = getattr(cfg, cls.coefficient_name)
            if coefficient is None and cfg.target_l0 is None:
                raise ConfigError(
                    f"{cls.arch} needs a sparsity level: give {cls.coefficient_name}=<λ ≥ 0> or "
                    "target_l0=<features per token>.",
                    field=cls.coefficient_name,
                )
            if cfg.target_l0 is not None and not cfg.target_l0 < cfg.d_sae:
                raise ConfigError(
                    f"target_l0 must lie in (0, d_sae={cfg.d_sae}), got {cfg.target_l0!r}.",
                    field="target_l0",
                    value=cfg.target_l0,
                )
        else:
            unused -= {"k"}
            if cfg.k is None:
                raise ConfigError(f"{cls.arch} needs k, the number of active features per token.", field="k")
            if not cfg.k <= cfg.d_sae:
                raise ConfigError(
                    f"k must be an integer in [1, d_sae={cfg.d_sae}], got {cfg.k!r}.", field="k", value=cfg.k
                )
            if cfg.aux_k is not None and not cfg.aux_k <= cfg.d_sae:
                raise ConfigError(
                    f"aux_k must be in [1, d_sae={cfg.d_sae}], got {cfg.aux_k!r}.", field="aux_k", value=cfg.aux_k
                )
        for name in sorted(unused):
            if getattr(cfg, name) is not None:
                raise ConfigError(f"{name} does not apply to arch={cls.arch!r}; remove it.", field=name)
        defaults = {f.name: f.default for f in dataclasses.fields(SAEConfig)}
        for name in OPTION_FIELDS:
            if name not in cls.options and getattr(cfg, name) != defaults[name]:
                raise ConfigError(
                    f"{name} does not apply to arch={cls.arch!r} (it applies to the architectures that "
                    "use it; see saekit.SAEConfig); remove it.",
                    field=name,
                )

    # ---- the architecture-specific part -------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """x: [..., d_in] -> f: [..., d_sae], non-negative."""
        raise NotImplementedError

    def loss(self, x: Tensor, *, target: Tensor | None = None, sparsity_scale: float = 1.0) -> LossOutput:
        """Training loss on a batch x: [batch, d_in]; ``target`` [batch, d_out] is what a
        transcoder predicts (an SAE's target is x itself). ``sparsity_scale`` multiplies the
        sparsity coefficient (the trainer's warm-up)."""
        raise NotImplementedError

    @classmethod
    def default_coefficient(cls) -> float:
        """Starting sparsity coefficient when only target_l0 is given."""
        raise NotImplementedError

    # ---- shared maths -------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Width of the prediction: d_in for an SAE, the target's width for a transcoder."""
        return self.cfg.d_out or self.cfg.d_in

    @property
    def centre(self) -> Tensor | None:
        """What the encoder subtracts from its input: b_dec, or nothing (transcoders; SAEs
        read from libraries that do not subtract it)."""
        return self.b_dec if self.cfg.apply_b_dec_to_input else None

    def centred_bias(self, bias: Tensor) -> Tensor:
        """bias − centre W_enc: the encoder's bias for x itself, so that x̃ W_enc + bias is
        one matmul of x (no gradient with respect to x, no pass to centre it)."""
        return bias if self.centre is None else bias - self.centre @ self.W_enc

    def pre_activations(self, x: Tensor) -> Tensor:
        """x̃ W_enc + b_enc: [..., d_sae], computed as x W_enc + (b_enc − b_dec W_enc) so that
        the backward pass needs no gradient with respect to x (one matmul fewer), with the
        bias added inside the matmul (no separate pass over [batch, d_sae])."""
        return self.encoder_matmul(self.normalize_input(x), self.centred_bias(self.b_enc))

    def normalize_input(self, x: Tensor) -> Tensor:
        """x under ``input_normalization`` (its statistics kept for decode to undo), or x."""
        mode = self.cfg.input_normalization
        if mode == "none":
            return x
        if mode == "constant_norm_rescale":  # x·c with c = √d_in / ‖x‖; decode divides by c
            scale = self.d_in**0.5 / x.norm(dim=-1, keepdim=True)
            self._norm_state = (scale, None)
            return x * scale
        mean = x.mean(dim=-1, keepdim=True)  # layer_norm: (x − μ) / (σ + 1e-5); decode: y σ + μ
        centred = x - mean
        std = centred.std(dim=-1, keepdim=True)
        self._norm_state = (std, mean)
        return centred / (std + 1e-5)

    def denormalize_output(self, y: Tensor) -> Tensor:
        if self.cfg.input_normalization == "none":
            return y
        if self._norm_state is None:
            raise RuntimeError("decode() before encode(): input_normalization needs the statistics of the input.")
        first, second = self._norm_state
        return y / first if second is None else y * first + second

    def skip(self, x: Tensor) -> Tensor | None:
        """A skip transcoder's linear term x W_skipᵀ: [..., d_out]; None for the others."""
        return x @ self.W_skip.t() if self.cfg.transcoder == "skip" else None

    def predict(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """The full prediction from a decoded x̂: x̂ plus the skip term where there is one."""
        skip = self.skip(x)
        return x_hat if skip is None else x_hat + skip.to(x_hat.dtype)

    def encoder_matmul(self, x: Tensor, bias: Tensor) -> Tensor:
        """x W_enc + bias: [..., d_sae], the bias added inside the matmul for a [batch, d_in] x."""
        if x.ndim == 2:
            return torch.addmm(bias, x, self.W_enc)
        return x @ self.W_enc + bias

    def decode(self, f: Tensor) -> Tensor:
        """f: [..., d_sae] -> x̂ = (s ⊙ f) W_dec + b_dec: [..., d_out]."""
        if self.cfg.feature_scale:
            f = f * self.feature_scale
        return self.denormalize_output(f @ self.W_dec + self.b_dec)

    def decode_sparse(self, active: Active) -> Tensor:
        """x̂ from the active entries only (flat or per-token layout of ``Active``) -> [B, d_in]."""
        values = active.values
        if self.cfg.feature_scale:
            values = values * self.feature_scale[active.indices]
        return sparse_decode(values, active.indices, self.W_dec, active.offsets) + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of x (a transcoder: its prediction of the target)."""
        return self.predict(x, self.decode(self.encode(x)))

    # ---- choosing between the dense and the sparse training path ------------------------------
    def train_sparsely(self, x: Tensor) -> bool:
        """Whether this training step should take the sparse path (see ``sparse_below``). The
        last batch's share of active entries (``observe_l0``) predicts this one's: it changes slowly."""
        return self.sparse_below > 1 or (x.device.type == "cpu" and self._active_share < self.sparse_below)

    def penalty_balance(self) -> Tensor | None:
        """After the backward, where the SAE's penalty acts on learned thresholds: the [2]
        sums from which the target-L0 controller reads the coefficient that balances the
        reconstruction's pull on them (``JumpReluSAE.penalty_balance``); None elsewhere."""
        return None

    def observe_l0(self, l0: Tensor) -> None:
        """The trainer reports each step's mean L0 (over all ranks), which decides the next
        step's path; read only on CPU, where it costs no wait for a device."""
        if l0.device.type == "cpu":
            self._active_share = float(l0) / self.d_sae

    def reconstruction_error(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Mean over tokens of ‖x̂ − x‖² (or ‖x̂ − x‖²/d_in with reconstruction_loss="mean"):
        [..., B, d] (broadcast) -> [...], one error per leading index."""
        squared = (x_hat.float() - x.float()).pow(2)
        per_token = squared.sum(-1) if self.cfg.reconstruction_loss == "sum" else squared.mean(-1)
        return per_token.mean(-1)

    def decoder_norms(self) -> Tensor:
        """‖d_i‖: [d_sae]."""
        return self.W_dec.norm(dim=1)

    def coefficient(self, sparsity_scale: float) -> Tensor:
        return self.sparsity_coefficient * sparsity_scale

    def optimizer_groups(self, encoder_lr_scale: float = 1.0, decoder_lr_scale: float = 1.0) -> list[dict]:
        """Parameter groups for the optimiser, one per distinct ``lr_scale``, which multiplies
        the trainer's learning rate for its parameters: ``encoder_lr_scale`` for W_enc,
        ``decoder_lr_scale`` for W_dec (TrainConfig's fields of those names), times the
        architecture's own ``lr_scale_of`` each parameter."""
        role = {"W_enc": encoder_lr_scale, "W_dec": decoder_lr_scale}
        groups: dict[float, list[nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            groups.setdefault(role.get(name, 1.0) * self.lr_scale_of(name), []).append(parameter)
        return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]

    def lr_scale_of(self, name: str) -> float:
        """The architecture's own multiple of the learning rate for its parameter ``name``."""
        return 1.0

    def recommended_lr(self) -> float:
        """The peak Adam learning rate TrainConfig.lr "auto" trains this SAE with, clipped at
        ``default_grad_clip`` (1, none for the TopK family): 1.5e-3·√(4608 / d_sae)
        (``width_scaled_lr``: the inverse square root in the width is the rule sparsify and
        dictionary_learning use), gated two thirds of it (``GatedSAE.recommended_lr``).
        Measured on SmolLM2-135M layers.15.resid_post (Shakespeare, the demo's store),
        4,608 latents, k or target_l0 32, batches of 4,096, seed 0, the trainer's other
        defaults (bf16, 2% warm-up, decay over the last 20%), held-out FVU and spliced KL
        per token, by benchmarks/quality_matched_tokens.py (``--only '^ARCH/saekit$'
        --setting defaults --seeds 0 --splice-tokens 4096 --saekit lr=… --saekit
        grad_clip=…``):

            arch      steps  lr      clip  FVU     L0    dead   KL
            topk      300    4e-4    1.0   0.0998  32     0.2%  0.344
            topk      300    1e-3    1.0   0.0858  32     0.4%  0.273
            topk      300    1e-3    off   0.0774  32     0.2%  0.243
            topk      300    1.5e-3  off   0.0717  32     1.0%  0.216
            topk      300    2e-3    off   0.0748  32     2.8%  0.204
            topk      2000   1.5e-3  off   0.0670  32     1.9%  0.191
            topk      2000   2e-3    off   0.0665  32     8.5%  0.198
            jumprelu  300    4e-4    1.0   0.149   33.4  16.2%  0.556
            jumprelu  300    1.5e-3  1.0   0.115   33.7   0.8%  0.390
            jumprelu  300    1.5e-3  off   0.122   32.4   0.0%  0.405
            gated     300    4e-4    1.0   0.0858  31.5   1.3%  0.479
            gated     300    1e-3    1.0   0.0712  32.0   6.5%  0.369
            gated     300    1.5e-3  1.0   0.0643  32.2   7.3%  0.330
            gated     300    1.5e-3  off   0.0638  32.0   5.9%  0.356
            relu      300    4e-4    1.0   0.0680  32.4   0.7%  0.529
            relu      300    1e-3    1.0   0.0517  33.3   1.5%  0.340
            relu      300    1.5e-3  1.0   0.0477  33.6   1.3%  0.294
            relu      300    1.5e-3  off   0.0547  33.1   0.0%  0.370
            relu      2000   4e-4    1.0   0.0383  34.0   3.2%  0.227
            relu      2000   1.5e-3  1.0   0.0336  34.5   0.0%  0.183
            jumprelu  2000   4e-4    1.0   0.0362  34.7   0.0%  0.187
            jumprelu  2000   1.5e-3  1.0   0.0296  33.8   0.8%  0.134
            gated     2000   4e-4    1.0   0.0533  32.3  21.9%  0.284
            gated     2000   1e-3    1.0   0.0381  33.2   7.9%  0.192
            gated     2000   1.5e-3  1.0   0.0602  32.1  23.6%  0.258

        For TopK, clipping the global norm at 1 binds once the rate is high enough to matter
        and costs more than it protects. The old 4e-4 underfit: the SAE spent its budget on
        the 0.02% of tokens (position 1, norms up to 150× the median) that hold a third of
        the squared norm, reconstructing them to 0.3% while leaving an FVU of 0.19 on all the
        others (0.145 at 1.5e-3, 0.132 after 2,000 steps). The penalised architectures keep
        the clip: unclipped, JumpReLU recovers fewer toy directions (92.7% on
        "superposition" against ≥ 95% clipped), and relu's KL is worse. The toy runs
        (evaluation/toy.py) give their own lr. A slower encoder than decoder
        (TrainConfig.encoder_lr_scale) is measured in sae/topk.py's docstring."""
        return width_scaled_lr(self.d_sae)

    # ---- hooks the trainer calls around each optimiser step -------------------------------
    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Remove from each decoder row's gradient its component along the row, so that
        the step moves the direction without changing the norm (to first order)."""
        if not self.unit_norm_decoder or self.W_dec.grad is None:
            return
        W, G = self.W_dec, self.W_dec.grad
        parallel = (G * W).sum(dim=1, keepdim=True) / W.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-12)
        G -= parallel * W

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def settle_for_inference(self, x: Tensor) -> None:
        """After the last optimiser step, on rows of the last global batch (in the units
        trained on): set what inference reads off training statistics. Nothing by default."""

    @torch.no_grad()
    def update_firing(self, fired: Tensor, n_tokens: int) -> None:
        """fired: [d_sae] bool, whether each feature fired anywhere in the last (global) batch."""
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired.masked_fill_(fired, 0)  # not [fired] = 0: that waits for a GPU
        self.batch_tokens = n_tokens

    def dead_mask(self) -> Tensor:
        """[d_sae] bool: features that have not fired for cfg.dead_tokens training tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens

    # ---- units and the suppression fix ------------------------------------------------------
    @torch.no_grad()
    def fold_activation_scale(self, c: float, c_out: float | None = None) -> None:
        """Make an SAE trained on c·x read raw x: features are unchanged, the encoder absorbs
        c and the decoder output is divided by it. A transcoder trained to predict c_out·y
        from c·x has its decoder (and skip term) divided by c_out instead; an SAE's output
        lives in its input's space, so for it c_out is c."""
        c_out = c if (c_out is None or not self.cfg.transcoder) else c_out
        self.W_enc *= c
        self.W_dec /= c_out
        self.b_dec /= c_out
        if self.cfg.transcoder == "skip":
            self.W_skip *= c / c_out
        self.cfg.activation_scale = self.cfg.activation_scale * c
        if self.cfg.transcoder:
            self.cfg.target_scale = self.cfg.target_scale * c_out

    def folded_scales(self) -> tuple[float, float]:
        """(c, c_out) folded into the weights so far (see fold_activation_scale)."""
        c = self.cfg.activation_scale
        return c, self.cfg.target_scale if self.cfg.transcoder else c

    # ---- what tools that expect SAELens-like objects read (SAEBench's custom-SAE contract) ----
    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @torch.no_grad()
    def init_b_dec(self, mean: Tensor) -> None:
        """Start b_dec at ``mean`` [d_out], the mean of a sample of (already normalised)
        targets, so that the encoder reads centred inputs from the first step. A [N, d_out]
        sample is refused rather than averaged: a mean over the wrong axis would broadcast
        one number into every coordinate (as it once did, leaving the encoder to fight the
        activations' mean direction, which on SmolLM2's residual stream holds three
        quarters of the norm, and killing a sixth of a TopK SAE's latents in 300 steps)."""
        if tuple(mean.shape) != tuple(self.b_dec.shape):
            raise ValueError(
                f"init_b_dec takes the mean vector of shape {tuple(self.b_dec.shape)}, got {tuple(mean.shape)}."
            )
        self.b_dec.copy_(mean.float())

    @torch.no_grad()
    def calibrate(self, sample: Tensor) -> None:
        """Before training, on a sample of (normalised) inputs [N, d_in]: architectures with
        a target L0 set their encoder biases so that every feature starts firing on
        target_l0 / d_sae of the tokens (``firing_quantiles``), instead of on half of them.
        The controller then starts at its target, and no feature is pushed past all its
        inputs by the first steps' large sparsity gradients (measured: dead features on
        toy data in superposition fall from 30-50% to 0-1% for relu and gated)."""

    @torch.no_grad()
    def shift_thresholds(self, rate: Tensor) -> None:
        """The target-L0 controller's fast loop: move each feature's firing point away from
        its pre-activations' centre by the factor exp(rate) (rate: a scalar or [d_sae];
        rate > 0: fewer features fire).
        The coefficient alone acts through the optimiser, whose steps are about lr long
        whatever the gradient: at a run's learning rate a threshold moves too slowly for a
        short run to reach its target (measured on Gemma 3 270M: JumpReLU at L0 75-180 for a
        target of 40 after 150 steps). Architectures with a target L0 implement it."""

    def firing_margins(self, x: Tensor, floor: float) -> Tensor:
        """What the target-L0 controller fits its shift to: for each (token, feature) of
        [B, d_in] ``x`` that would fire after ``shift_thresholds(floor)``, the shift at which
        it stops firing: log(drive / firing point), +inf where shift_thresholds does not
        move the point (1-D, in no set order). So after ``shift_thresholds(u)``, u ≥ floor,
        count(margins > u) / B is x's L0. Architectures with a target L0 implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no firing thresholds to shift")

    def _margins(self, x: Tensor, drive_bias: Tensor, point: Tensor, floor: float) -> Tensor:
        """``firing_margins`` of an encoder whose feature i fires where its drive x̃ W_enc_i
        + drive_bias_i exceeds ``point``_i. The cut point·e^floor is subtracted inside the
        encoder's matmul, so that [B, d_sae] sees one comparison, and logs are taken over
        the kept entries alone. A point at or below the centre (0) is never lowered by
        ``_scale_threshold_bias``, and raising it moves it towards 0 rather than by a factor:
        such a feature keeps firing where it fires (+inf)."""
        point = point.detach().float()
        movable = point > 0
        cut = torch.where(movable, point * math.exp(floor), point)
        bias = self.centred_bias(drive_bias.detach().float() - cut)
        above = self.encoder_matmul(self.normalize_input(x.float()), bias)
        kept = above > 0
        features = kept.nonzero()[:, 1]
        drive = above[kept] + cut[features]
        return torch.log(drive / point[features]).where(movable[features], float("inf"))

    @staticmethod
    def _scale_threshold_bias(bias: Tensor, rate: Tensor) -> None:
        """A bias b whose negative is the firing point (z = x̃ W + b fires where z > 0, x̃
        centred): b − (e^rate − 1)·|b| moves the point by the factor e^rate, either side of 0.
        A firing point already below the centre (b > 0: the feature fires on about half the
        tokens or more) is never lowered further: there the move would compound, b growing
        by the factor 2 − e^rate every step (measured: gated on toy data with a centred
        encoder, b_gate from 0 to 1e14 in 40 steps once the optimiser had pushed it past 0,
        then a non-finite loss)."""
        step = torch.expm1(rate).to(bias.dtype) * bias.abs()
        bias.sub_(torch.where((bias > 0) & (step < 0), torch.zeros_like(step), step))

    def firing_quantiles(self, values: Tensor) -> Tensor:
        """Per feature, the value of [N, d_sae] ``values`` that target_l0 / d_sae of the rows exceed."""
        n = values.shape[0]
        rank = min(n, max(1, round(n * (1 - self.cfg.target_l0 / self.d_sae))))
        return values.float().kthvalue(rank, dim=0).values

    def add_feature_scale(self) -> None:
        if not hasattr(self, "feature_scale"):
            self.feature_scale = nn.Parameter(torch.ones(self.cfg.d_sae, device=self.W_dec.device))
        self.cfg.feature_scale = True

    # ---- persistence ------------------------------------------------------------------------
    def state_for_save(self) -> dict[str, Tensor]:
        """The tensors of sae_weights.safetensors, named as SAELens names them."""
        return {
            name: t.detach().contiguous() for name, t in self.state_dict().items() if name != "sparsity_coefficient"
        }

    _folder_writer: ClassVar[Callable | None] = None
    """Writes an SAE folder: set by saekit.formats (saekit's folder format), which imports
    this layer; the SAE layer itself knows no file format."""

    def save(self, path: str | Path, *, overwrite: bool = False, feature_frequency: Tensor | None = None) -> Path:
        """Write the SAE as a folder that saekit and SAELens load (saekit.formats.saekit):
        cfg.json + sae_weights.safetensors; ``feature_frequency`` [d_sae] adds
        sparsity.safetensors."""
        if SparseAutoencoder._folder_writer is None:
            raise RuntimeError("saekit.formats is not imported; `import saekit` registers the SAE folder writer.")
        return SparseAutoencoder._folder_writer(self, path, overwrite=overwrite, feature_frequency=feature_frequency)

    def config_for_save(self) -> SAEConfig:
        """cfg with the current sparsity coefficient written back (the controller may have moved it)."""
        cfg = SAEConfig.from_dict(json.loads(self.cfg.to_json()))
        if self.coefficient_name is not None:
            setattr(cfg, self.coefficient_name, float(self.sparsity_coefficient))
        return cfg

    @classmethod
    def expected_tensors(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """{name: shape} of the tensors an SAE with this config saves, found without
        allocating them (the SAE is built on the meta device)."""
        with torch.device("meta"):
            sae = cls(cfg)
        return {name: tuple(t.shape) for name, t in sae.state_for_save().items()}

    @classmethod
    def from_tensors(cls, cfg: SAEConfig, tensors: dict[str, Tensor]) -> SparseAutoencoder:
        """An SAE holding ``tensors`` (float32 copies), without initialising weights first."""
        with torch.device("meta"):
            sae = cls(cfg)
        layout = sae.state_dict()
        # Each tensor in the memory layout a new SAE gives it (W_enc is stored transposed),
        # so that a loaded SAE computes bit for bit what the saved one did.
        placed = {
            name: torch.empty_strided(
                layout[name].shape, layout[name].stride(), dtype=torch.float32 if t.is_floating_point() else t.dtype
            ).copy_(t)
            for name, t in tensors.items()
        }
        sae.load_state_dict(placed, strict=False, assign=True)
        sae.cfg = cfg
        with torch.device("cpu"):
            sae._register_training_state()
        for name, tensor in sae.state_dict().items():
            if tensor.is_meta:
                raise ConfigError(f"no tensor {name!r} was given for a {cls.arch} SAE.")
        return sae

    def extra_repr(self) -> str:
        return f"arch={self.arch}, d_in={self.d_in}, d_sae={self.d_sae}"
