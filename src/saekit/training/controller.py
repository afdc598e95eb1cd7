"""The target-L0 controller: keeps a penalised SAE's L0 at ``target_l0`` from the first
steps of a run to its last, whatever the run's length.

The coefficient λ alone acts through the optimiser, whose steps are about lr long whatever
the gradient: at a run's learning rate a firing threshold moves too slowly for a short run
to reach its target (measured on Gemma 3 270M, layers.9.mlp_out, target 40: JumpReLU ended
at L0 75-180 after 150 steps, and tuning λ's loop alone left every architecture 10-50% off
at a fifth of the run). So two loops share one error, e = log((L0 + 1) / (target + 1)):

- fast: the firing thresholds of the features that fired move by the factor exp(u) a step,
  u = η·e + w·D (``SparseAutoencoder.shift_thresholds``; lowering moves every feature's, so
  none is pushed out for good). The next batch's L0 responds at once. D += η·e/10 learns
  the drift the optimiser adds each step, which would otherwise leave an error while λ is
  still catching up; its weight w is 1 for the first fifth of the run and falls to 0 at
  two fifths. A drift term kept on for the whole run fights the optimiser for good: on toy
  data JumpReLU then kept its L0 with most features dead (FVU 0.72 against 0.19, 93% of
  the true directions against 99%), and gated lost a tenth of them.
  η adapts as Rprop's steps do: ×1.2 while e keeps its sign, ×0.6 when it flips, within
  [0.005, 1], from 0.5, because how strongly L0 answers a threshold's log changes by an
  order of magnitude over a run (as thresholds move into the tails, and as the optimiser
  pulls them back). Flips inside the batches' noise (twice a running estimate of |Δe|/2,
  between ±2% and ±4%) change nothing, so noise does not leave η too small to follow when
  the optimiser's drift turns. D stays above −0.2 (−DRIFT_SCALE, where it weighs as much in
  λ's loop as a full error): an integral that winds up while the thresholds cannot follow
  drives λ geometrically to nothing, and λ comes back from there only as slowly. Measured
  on toy data (64 dims, dictionary 2×, target 1.5× the true L0; TOY_SETTINGS): on
  "correlated" gated's D reached −20 in 500 steps and λ fell from 1 to below 1e-3, after
  which the fast loop alone held the L0 by pushing b_gate to −150 (71% of the true
  directions, FVU 0.86; 95% and FVU 0.13 bounded; a fixed λ = 3 gives L0 5.4, 99.6%, FVU
  0.10); on "superposition" JumpReLU went from FVU 0.76 with 83% of its latents dead to
  FVU 0.11 and 96%, and gated from 58% and FVU 1.04 to 73% and FVU 0.13. Bounded above
  as well, at +0.2, the integral could no longer raise λ as far as "easy" needs: JumpReLU
  fell from 97% to 65% there. The integral is kept small against the proportional step:
  with a quarter and η ≤ 0.2, JumpReLU on Gemma 3 270M swung ±25% around its target with a
  period of ~60 steps, an underdamped loop.
- slow: λ ← λ · exp(g · (e + D / 0.2)), g = 5 / steps by default, so that λ takes over
  what the fast loop compensates and the thresholds stop being pushed.

Everything stays on the device (no wait per step on a GPU); ``state`` and ``load`` carry it
through checkpoints, so that a resumed run continues exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

RATE_START, RATE_MIN, RATE_MAX = 0.5, 0.005, 1.0
NOISE_BAND, NOISE_BAND_MAX = 0.02, 0.04
GROW, SHRINK = 1.2, 0.6
DRIFT_SHARE, DRIFT_SCALE = 0.1, 0.2
DRIFT_FULL, DRIFT_END = 0.2, 0.4
NOISE_SPAN, NOISE_MOMENTUM = 2.0, 0.95


def drift_weight(progress: float) -> float:
    """How much of the learned drift D the thresholds take at ``progress`` into the run: all
    of it for the first fifth, none from two fifths on (λ has taken it over by then)."""
    return min(1.0, max(0.0, (DRIFT_END - progress) / (DRIFT_END - DRIFT_FULL)))


STATE = ("rate", "drift", "last", "noise")


class L0Controller:
    def __init__(self, target: float, gain: float, device: torch.device) -> None:
        self.target = float(target)
        self.gain = float(gain)
        self.rate = torch.tensor(RATE_START, device=device)
        self.last = torch.tensor(0.0, device=device)
        self.drift = torch.tensor(0.0, device=device)
        self.noise = torch.tensor(NOISE_BAND, device=device)

    def update(self, l0: Tensor, progress: float = 0.0) -> tuple[Tensor, Tensor]:
        """This step's (log-threshold shift, factor for λ) from the step's global mean L0,
        ``progress`` (step / steps) into the run."""
        error = torch.log((l0.float() + 1) / (self.target + 1)).clamp(-1, 1)
        band = torch.clamp(NOISE_SPAN * self.noise, min=NOISE_BAND, max=NOISE_BAND_MAX)
        outside = (error.abs() > band) & (self.last.abs() > band)
        self.noise = NOISE_MOMENTUM * self.noise + (1 - NOISE_MOMENTUM) * (error - self.last).abs() / 2
        agree = error * self.last
        factor = torch.where(outside & (agree > 0), GROW, torch.where(outside & (agree < 0), SHRINK, 1.0))
        self.rate = (self.rate * factor).clamp(RATE_MIN, RATE_MAX)
        self.drift = (self.drift + DRIFT_SHARE * self.rate * error).clamp(min=-DRIFT_SCALE)
        self.last = error
        shift = self.rate * error + drift_weight(progress) * self.drift
        return shift, torch.exp(self.gain * (error + self.drift / DRIFT_SCALE))

    def state(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in STATE}

    def load(self, state: dict[str, float]) -> None:
        for name in STATE:
            if name in state:
                getattr(self, name).fill_(float(state[name]))
