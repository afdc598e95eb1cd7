"""The target-L0 controller: keeps a penalised SAE's L0 at ``target_l0`` from the first
steps of a run to its last, whatever the run's length.

The coefficient λ alone acts through the optimiser, whose steps are about lr long whatever
the gradient: at a run's learning rate a firing threshold moves too slowly for a short run
to reach its target (measured on Gemma 3 270M, layers.9.mlp_out, target 40: JumpReLU ended
at L0 75-180 after 150 steps). So two loops share one error, e = log((L0 + 1) / (target + 1)),
L0 the step's batch's, measured in its forward pass:

- fast, a fit rather than a gain: after the optimiser's step, the SAE says for a stride of
  the batch's rows (FIT_ROWS of them) by how much each near-threshold (token, feature)'s
  firing point would have to move for it to stop firing (``firing_margins``, at the new
  parameters). The shift u whose count of larger margins gives those rows the L0
  (their L0 before the step + 1)·exp(−CLOSE·e) − 1, the batch's needed factor applied to
  the rows' own L0 (``update``'s ``before``), moves every firing point by the factor exp(u)
  (``shift_thresholds``). That undoes exactly what the optimiser's own step did to the L0,
  and removes CLOSE of the error that was left; it needs no gain and no estimate of how
  strongly L0 answers the thresholds, which changes by an order of magnitude over a run.
  The gain loop it replaces measured its error before the optimiser's step and so held a
  steady error of (the optimiser's drift) / gain: on toy data the optimiser moved JumpReLU's
  L0 by ~6% a step while the learning rate was high, and at 150 and 300 steps single
  batches ended 11-15% off where this fit keeps them within 8% (tests/test_controller.py).
  The margins are counted into BINS bins over ±MAX_SHIFT, so that the ranks of a
  data-parallel run add their counts (exact integers) and every rank takes the same shift,
  the one a single process would with the whole batch; the shift is read off the counts
  by linear interpolation, on the device (no wait per step).
- slow: λ ← λ · exp(g · (e + D / DRIFT_SCALE)), g = 5 / steps by default, with D a running
  sum of DRIFT_SHARE of the fitted shifts: while the fit keeps raising the thresholds
  against the optimiser, λ keeps growing until the penalty holds the L0 itself (without D,
  λ stayed where it started and JumpReLU's 1,500-step toy explained variance was 0.71
  against 0.88 at the same L0). D stays above −DRIFT_SCALE: an integral that winds up while
  the thresholds cannot follow (gated's gates that cannot open further) drives λ
  geometrically to nothing, and λ comes back from there only as slowly (measured on toy
  "correlated": D at −20 in 500 steps, λ from 1 to below 1e-3, 71% of the true directions
  against 95% bounded).

- a floor, where the SAE's penalty acts on learned thresholds (JumpReLU): λ is held at or
  above BALANCE_MARGIN times λ*, the coefficient at which the thresholds' straight-through
  gradients, summed, cancel (``SparseAutoencoder.penalty_balance``, measured in each step's
  backward; a running mean over about 10 steps). Below λ*, the optimiser lowers thresholds
  on the whole, the fit raises them all by a common factor to hold the L0, and the
  thresholds of the latents that fire rarely, which no gradient pulls back, are pushed out
  of reach: the slow loop, an integrator started at the default λ 0.1, lags λ* by hundreds
  of steps. Traced on the demo's store (SmolLM2 layers.15, target 32, 4,608 latents): λ*
  is 0.5-1.1 over the first 200 steps while λ climbs from 0.1 to 0.47, and 2,355 latents
  (51%) fire on none of the last 5 batches at step 200; on toy "superposition" 60-85% are
  silent for the first quarter of the run, and ~400 of the 768 latents end as random
  directions that found no true feature. Held at 1.5 λ*, the fit lowers the thresholds
  on the whole instead, which brings rarely firing latents back. Measured (300 steps on
  the demo's store, ``benchmarks/quality_matched_tokens.py --only '^jumprelu/saekit$'``):
  held-out FVU 0.0880 → 0.0784, KL 0.275 → 0.233, ΔCE 0.056 → 0.025, dead 0.2% → 0.0%;
  on Gemma 3 270M layers.9.mlp_out (target 40) 0.1289 → 0.1087 at 150 steps, but 0.0655 →
  0.0710 at 1,500, where λ sits on the floor from step ~540 while the slow loop would take
  it lower (benchmarks/README, "λ held above its measured balance").

``state`` and ``load`` carry D and λ*'s running mean through checkpoints, so that a resumed
run continues exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLOSE = 0.3
"""Share of the remaining error that one step's fit removes (the rest is left to later
batches, so that one batch's sampling noise moves the thresholds by a third of itself)."""
MAX_SHIFT = 0.5
"""Largest move of a firing point's log in one step, either way."""
FIT_ROWS = 1024
"""Rows the fit uses (a stride of the batch): 512 of the toy's 1,024 left batches 10-12% off."""
TIE = 1e-5
"""Margins up to this count as not firing in the fit rows' count before the step: calibration
puts thresholds exactly on pre-activations, where rounding that differs between ranks (an
activation scale summed in another order) would flip them, and a data-parallel run would
not equal one process (measured: 799 against 800 at step 0 of a JumpReLU run)."""
BINS = 1000
WIDTH = 2 * MAX_SHIFT / BINS
DRIFT_SHARE, DRIFT_SCALE = 0.1, 0.2
BALANCE_MEMORY = 0.9
"""Per-step decay of the running mean of the measured balance λ* (about 10 steps)."""
BALANCE_MARGIN = 1.5
"""λ is held at or above this multiple of the balance λ*. Measured on toy "superposition"
(JumpReLU, seeds 0-2, fraction of true directions recovered): no floor 0.938, 0.930, 0.930;
floor at 1× 0.951, 0.951, 0.935; 1.5× 0.951, 0.961, 0.953; 2× 0.940, 0.956, 0.943. On the
demo's store (300 steps, target 32): held-out FVU 0.0880 / 0.0793 / 0.0784, dead 0.2% /
0.3% / 0.0% for none / 1× / 1.5×."""
STATE = ("drift", "balance")


def fit_stride(batch_size: int) -> int:
    """The stride of a batch's rows that the fit uses; it depends on the global batch only,
    so that a data-parallel run fits the same rows as one process."""
    return max(1, batch_size // FIT_ROWS)


def margin_counts(margins: Tensor) -> Tensor:
    """[BINS + 1] int64 counts of 1-D ``margins`` ≥ −MAX_SHIFT: bin j holds those in
    [edge_j, edge_j+1), the last those ≥ MAX_SHIFT (+inf included); ranks sum them."""
    index = ((margins.float() + MAX_SHIFT) / WIDTH).floor().clamp(0, BINS).long()
    return torch.bincount(index, minlength=BINS + 1)


def firing_count(margins: Tensor) -> Tensor:
    """How many of ``firing_margins(rows, 0.0)`` fire: the rows' active pairs at the current
    parameters, what ``L0Controller.update`` takes as ``before`` (ranks sum it)."""
    return (margins > TIE).sum()


class L0Controller:
    def __init__(self, target: float, gain: float, device: torch.device) -> None:
        self.target = float(target)
        self.gain = float(gain)
        self.drift = torch.tensor(0.0, device=device)
        self.balance = torch.tensor(0.0, device=device)

    def update(
        self,
        l0: Tensor,
        counts: Tensor,
        rows: int,
        before: Tensor | None = None,
        coefficient: Tensor | None = None,
        balance: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """This step's (log-threshold shift, factor for λ), from the step's global mean L0
        and the ``margin_counts`` of ``rows`` rows at the parameters after the step.

        ``before``: those rows' number of active (token, feature) pairs at the parameters
        before the step. With it, the fit moves those rows' L0 by the factor the batch's
        needs, (L0 + 1)·exp(−CLOSE·e), rather than to the batch's wanted L0 itself: the rows
        are a stride of the batch, and their own L0 differs from the batch's by a few
        percent (measured on Gemma 3 270M early in a run: 3-5% for 1,024 of 4,096 rows).
        Fitted to the batch's value, that difference went into the thresholds whole, every
        step, unfiltered by CLOSE (relu and gated 11.6% off their target at step 36 of 150).

        ``coefficient`` and ``balance``: λ now and the step's ``penalty_balance`` sums (over
        all ranks); with them, the factor does not take λ below BALANCE_MARGIN · λ*."""
        error = torch.log((l0.float() + 1) / (self.target + 1)).clamp(-1, 1)
        # The L0 the fit gives these rows: CLOSE of the error removed.
        if before is None:
            wanted = ((self.target + 1) * torch.exp((1 - CLOSE) * error.double()) - 1) * rows
        else:
            wanted = (before.double() + rows) * torch.exp(-CLOSE * error.double()) - rows
        # above[j]: margins ≥ edge j; count(margins > u) falls from above[0] at −MAX_SHIFT.
        above = counts.flip(0).cumsum(0).flip(0).double()
        j = (above >= wanted).sum() - 1
        at = j.clamp(0, BINS - 1)
        high, low = above[at], above[at + 1]
        share = ((high - wanted) / (high - low).clamp(min=1)).clamp(0, 1)
        shift = -MAX_SHIFT + (at + share) * WIDTH
        shift = torch.where(j < 0, -MAX_SHIFT, torch.where(j >= BINS, MAX_SHIFT, shift)).float()
        self.drift = (self.drift + DRIFT_SHARE * shift).clamp(min=-DRIFT_SCALE)
        factor = torch.exp(self.gain * (error + self.drift / DRIFT_SCALE))
        if coefficient is not None and balance is not None:
            factor = torch.maximum(factor, self._balance_floor(coefficient, balance) / coefficient)
        return shift, factor

    def _balance_floor(self, coefficient: Tensor, sums: Tensor) -> Tensor:
        """The running mean of λ* = −λ · sums[0] / sums[1] over the steps where it was
        positive (at a random start the reconstruction itself wants fewer features), which
        λ is not let fall below."""
        measured = -coefficient.float() * sums[0] / sums[1].clamp(min=torch.finfo(torch.float32).tiny)
        usable = torch.isfinite(measured) & (measured > 0) & (sums[1] > 0)
        mean = BALANCE_MEMORY * self.balance + (1 - BALANCE_MEMORY) * measured
        blended = torch.where(self.balance > 0, mean, measured)
        self.balance = torch.where(usable, blended, self.balance)
        return BALANCE_MARGIN * self.balance

    def state(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in STATE}

    def load(self, state: dict[str, float]) -> None:
        """A checkpoint's state; keys of older controllers (rate, last, noise) are ignored."""
        for name in STATE:
            if name in state:
                getattr(self, name).fill_(float(state[name]))
