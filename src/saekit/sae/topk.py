"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    z = (x − b_dec) W_enc + b_enc
    f = ReLU(z) on the k largest entries of each token's z, 0 elsewhere

It trains sparsely (sparse_decode.py): only the selected latents are decoded and
receive encoder gradient.

AuxK: the residual e = x − x̂ (gradient stopped) is reconstructed from the aux_k largest
pre-activations among dead latents, ê = f_aux W_dec, and ‖e − ê‖² is added with weight
aux_coefficient, scaled down while fewer than aux_k latents are dead. It gives dead
latents a gradient that points them at what the live ones miss; that gradient passes the
ReLU of f_aux straight through, so that it also reaches a latent whose pre-activations are
negative on every token (sparse_decode._aux_gamma has the measurement).

Which latents, how many, how heavily. Gao et al. count a latent dead after 10M silent
tokens and decode d_in // 2 of them at weight 1/32; saekit did the same with a 1M window.
Most latents that die do so in the first hundred steps, and such a window opens only after
244 batches of 4,096 tokens: in a 300-step run AuxK never starts, and in toy runs (batches
of 1,024) it starts when it is too late. So a latent joins AuxK after aux_dead_batches (10)
silent batches, aux_k is k // 2, the weight 1. Measured, held-out FVU, dead latents, spliced
KL and ΔCE on SmolLM2-135M layers.15.resid_post (the demo's store; k 32, 4,608 latents,
300 steps of 4,096 tokens, seed 0, the trainer's defaults; benchmarks/quality_matched_tokens.py
``--only '^ARCH/saekit$' --setting defaults --steps 300 --seeds 0 --splice-tokens 4096
--saekit aux_dead_batches=… --saekit aux_k=… --saekit aux_coefficient=…``):

    arch       window         aux_k  weight  FVU     dead   KL     ΔCE
    topk       1M tokens      288    1/32    0.0716  1.0%   0.216  0.031   (before)
    topk       10 batches     288    1/32    0.0716  0.7%   0.212  0.027
    topk       40 batches     32     1       0.0716  0.7%   0.217  –
    topk       10 batches     64     1/4     0.0717  0.3%   0.218  0.038
    topk       10 batches     32     1       0.0717  0.3%   0.218  0.035
    topk       10 batches     16     1       0.0717  0.3%   0.218  0.026   (now)
    batchtopk  1M tokens      288    1/32    0.0865  1.4%   0.270  –       (before)
    batchtopk  10 batches     16     1       0.0869  0.6%   0.268  0.057   (now)

At 2,000 steps (``--steps 2000``, seed 0), before and now: TopK FVU 0.0680 and 0.0676,
dead 1.9% and 1.8%, KL 0.194 and 0.197; BatchTopK 0.0629 and 0.0629, 0.5% and 0.3%,
0.164 and 0.168. So the window cures the early deaths, not the ones of a long run ("dead"
here: never fires on the 32k held-out rows). Every table in this module holds out the
store's last contexts (``--heldout-split tail``, the benchmark's split before 2026-12-07),
the end of a play no training row shows, where more latents look dead than on contexts
drawn at random (2,000 steps: 18 against 5; benchmarks/README.md, "Held-out contexts drawn
at random", and "Which default loses TopK's rare latents"). With encoder_lr_scale 0.7
(now TopK's default) TopK at 2,000 steps reaches FVU 0.0662, 0.5% dead, KL 0.181 (0.0665, 0.9%, 0.186
with the old AuxK).

Seeds 0-2, before: FVU 0.0716 0.0714 0.0718, dead 1.0 0.9 0.7%, KL 0.216 0.224 0.223; now:
0.0717 0.0716 0.0719, 0.3 0.2 0.2%, 0.218 0.220 0.220. BatchTopK now, seeds 0-2: 0.0869
0.0858 0.0861, 0.6 0.3 0.5%, 0.268 0.264 0.262. On the toys
(benchmarks/toy_recovery.py; fraction of the true directions found, seeds 0 and 1):

    setting        arch        before        window 10, aux_k 2, 1   window 10, aux_k 6, 1
    easy           batchtopk   0.734 0.766   0.938 0.891             0.867 0.852
    easy           matryoshka  0.742         0.883 0.891             0.852 0.797
    superposition  topk        0.948         1.000 0.997             0.997 1.000
    superposition  batchtopk   0.878         0.932 0.930             0.924 0.940
    superposition  matryoshka  0.852         0.904 0.896             0.919 0.930

A longer window loses what the short one gains (BatchTopK on "easy", aux_k 1 or 2: 0.922
at 10 batches, 0.867 at 20, 0.805 at 30, 0.773 at 50), and so does a lighter weight.

A slower encoder (TrainConfig.encoder_lr_scale; TopK's default is 0.7, see
``TopKSAE.default_encoder_lr_scale``) loses fewer latents early; the decoder's rate is what
buys FVU. Measured with the old AuxK (1M-token window) on
SmolLM2-135M layers.15.resid_post (the demo's store), k 32, 4,608 latents, batches of
4,096 tokens, the trainer's other defaults (lr 1.5e-3), held-out FVU, dead latents and spliced KL per token, by
benchmarks/quality_matched_tokens.py (``--only '^topk/saekit$' --setting defaults
--splice-tokens 4096 --saekit encoder_lr_scale=E --saekit decoder_lr_scale=D``):

    steps  E    D    seeds   FVU                     dead            KL
    300    1    1    0,1,2   0.0716 0.0714 0.0718    1.0 0.9 0.7%    0.216 0.224 0.223
    300    0.5  1    0       0.0743                  0.0%            0.236
    300    0.7  1    0,1,2   0.0727 0.0725 0.0728    0.2 0.2 0.1%    0.226 0.226 0.225
    300    1    0.5  0       0.0807                  1.2%            0.259
    300    0.8  1.2  0       0.0708                  0.3%            0.215
    300    0.7  1.3  0       0.0709                  0.1%            0.215
    300    0.6  1.4  0       0.0755                  0.2%            0.219
    300    0.7  1.5  0,1,2   0.0701 0.0744 0.0701    0.1 0.1 0.0%    0.214 0.212 0.215
    2000   1    1    0       0.0680                  1.9%            0.194
    2000   0.7  1    0       0.0665                  0.9%            0.186
    2000   0.7  1.5  0       0.0679                  5.4%            0.207

BatchTopK, seed 0, E 0.7 against 1: 0.0872, 0.2% dead, KL 0.269 against 0.0865, 1.4%,
0.270 at 300 steps; 0.0631, 0.8%, 0.165 against 0.0629, 0.5%, 0.164 at 2,000. With the old
AuxK the toys disagreed, for TopK too: at E 0.7 (benchmarks/toy_recovery.py, seed 0) TopK
recovered 0.927 of the "superposition" directions against 0.948, BatchTopK 0.695 of "easy"
against 0.734 and 0.870 of "superposition" against 0.878, Matryoshka 0.711 and 0.844
against 0.742 and 0.852. With today's AuxK TopK recovers every direction at 0.7 and the
BatchTopK family still loses, so 0.7 is TopK's default and not theirs
(``TopKSAE.default_encoder_lr_scale``, ``BatchTopKSAE.default_encoder_lr_scale``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LossOutput, SparseAutoencoder
from .config import SAEConfig
from .selection import row_topk
from .sparse_decode import Active, Aux, select_topk, sparse_decode


class TopKSAE(SparseAutoencoder):
    arch = "topk"
    summary = "ReLU of the k largest pre-activations of each token; AuxK revives dead latents"
    options = ("aux_k", "aux_coefficient", "aux_dead_batches")
    encoder_init_scale = 3**-0.5
    """The encoder starts at W_decᵀ/√3, the row norm of nn.Linear's default init (which
    sparsify starts from), not at W_decᵀ. Measured (TopK k 32, 4,608 latents, 300 steps of
    4,096 tokens, fp32, lr 4e-4 constant, held-out FVU, same rows for all): SmolLM2-135M
    layers.15.resid_post on Shakespeare 0.1009 at scale 1, 0.0953 at 1/√3, 0.0965 at 0.3
    (1.3% dead), 0.099 at 0.15 (3.5% dead); layers.6.resid_post on other English text
    0.1229 at 1, 0.1149 at 1/√3 (sparsify 0.1015 and 0.1205 on the same data). Its
    subclasses (batchtopk, matryoshka_batchtopk) inherit it."""
    default_grad_clip = None
    """No gradient clipping: it binds once the learning rate is high enough to matter, and
    costs more than it protects (``SparseAutoencoder.recommended_lr``'s table)."""
    default_encoder_lr_scale = 0.7
    """W_enc trains at 0.7 of the learning rate (TrainConfig.encoder_lr_scale "auto"): fewer
    latents die, and a long run ends with a lower FVU and KL. Measured with today's AuxK on
    SmolLM2-135M layers.15.resid_post (the demo's store), k 32, 4,608 latents, batches of
    4,096, the trainer's other defaults, seeds 0, 1, 2 (benchmarks/quality_matched_tokens.py
    ``--only '^topk/saekit$' --setting defaults --steps S --seeds 0,1,2 --splice-tokens 4096
    --saekit encoder_lr_scale=E``):

        steps  E    FVU                     dead            KL                  ΔCE
        300    1    0.0717 0.0716 0.0719    0.3 0.2 0.2%    0.218 0.220 0.220   0.026 0.039 0.050
        300    0.7  0.0728 0.0726 0.0728    0.04 0.04 0.07% 0.226 0.225 0.230   0.038 0.038 0.060
        2000   1    0.0676 0.0660 0.0675    1.8 0.8 1.6%    0.197 0.183 0.198   0.029 0.027 0.030
        2000   0.7  0.0662 0.0656 0.0658    0.5 0.5 0.5%    0.181 0.172 0.181   0.022 0.029 0.017

    A short run pays 1.5% of FVU and 3.5% of KL for it (and stays far ahead of the peers:
    sparsify's best at 300 steps is 0.1026, KL 0.347, 0.1% dead); a long one gains 1.6% of
    FVU and 8% of KL and loses a third as many latents. On the toys (evaluation/toy.py, seed
    0) TopK still recovers every true direction at 0.7 (easy and superposition: 1.000). Its
    subclasses set 1 again (BatchTopKSAE.default_encoder_lr_scale)."""

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))

    @property
    def aux_k(self) -> int:
        """Dead latents the AuxK loss decodes per token: cfg.aux_k, else k // 2 (at least one)."""
        return self.cfg.aux_k or max(1, self.cfg.k // 2)

    def aux_dead_mask(self) -> Tensor:
        """[d_sae] bool: the latents AuxK trains, those silent for cfg.aux_dead_batches
        training batches (or cfg.dead_tokens tokens, if that is shorter)."""
        window = self.cfg.dead_tokens
        if self.batch_tokens:
            window = min(window, self.cfg.aux_dead_batches * self.batch_tokens)
        return self.tokens_since_fired >= window

    def encode(self, x: Tensor) -> Tensor:
        z = self.pre_activations(x)
        values, indices = row_topk(z, self.cfg.k)
        return torch.zeros_like(z).scatter_(-1, indices, torch.relu(values))

    def aux(self) -> Aux | None:
        """What AuxK picks from this step: the latents of ``aux_dead_mask`` and aux_k (at most
        their number) per token; None while none is dead or AuxK is off."""
        if self.cfg.aux_coefficient == 0:
            return None
        dead = torch.nonzero(self.aux_dead_mask()).flatten()
        return Aux(dead, min(self.aux_k, dead.numel())) if dead.numel() else None

    def select(self, x: Tensor, aux: Aux | None = None) -> tuple[Active, Active | None]:
        """Training-time active latents, with the sparse backward of sparse_decode.py, and
        with ``aux`` AuxK's picks from the same pre-activations."""
        return select_topk(x, self.W_enc, self.b_enc, self.centre, self.cfg.k, aux)

    def loss(self, x: Tensor, *, target: Tensor | None = None, sparsity_scale: float = 1.0) -> LossOutput:
        target = x if target is None else target
        aux = self.aux()
        active, picked = self.select(x, aux)
        reconstruction, x_hat = self.reconstruction_and_output(x, target, active)
        parts = {"reconstruction": reconstruction}
        total = reconstruction
        if picked is not None:
            parts["auxiliary"] = self.auxk_loss(picked, (target - x_hat).detach(), aux.latents.numel())
            total = total + parts["auxiliary"]
        return LossOutput.from_entries(total, parts, x_hat, active.indices, active.values.detach() > 0, self.d_sae)

    def reconstruction_and_output(self, x: Tensor, target: Tensor, active: Active) -> tuple[Tensor, Tensor]:
        """(the reconstruction term, the prediction ŷ) from the active latents."""
        x_hat = self.predict(x, self.decode_sparse(active))
        return self.reconstruction_error(target, x_hat), x_hat

    def auxk_loss(self, picked: Active, residual: Tensor, n_dead: int) -> Tensor:
        """‖e − ê‖² with ê decoded from AuxK's picks (``select``'s second result: the aux_k
        largest pre-activations of dead latents per token), weighted by aux_coefficient and
        scaled down while fewer than aux_k of the ``n_dead`` latents are dead."""
        residual_hat = sparse_decode(picked.values, picked.indices, self.W_dec)
        error = (residual_hat.float() - residual.float()).pow(2)
        per_token = error.sum(-1) if self.cfg.reconstruction_loss == "sum" else error.mean(-1)
        return self.cfg.aux_coefficient * min(n_dead / self.aux_k, 1.0) * per_token.mean()
