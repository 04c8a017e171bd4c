"""A ridge-regression readout of arousal/valence/dominance, fitted in closed form on frozen encoder features.

Why. On both demo corpora the frozen Whisper tiny.en encoder already knows arousal: ridge regression on the
clip means of its hidden states (all layers side by side, standardised, the ridge strength chosen on dev as the
classical eGeMAPS row chooses its own) reaches dev arousal CCC 0.823 (demo corpus) and 0.760 (corpus 2), where
the audio-LLM's trained attribute head reached 0.730 and 0.677 (3 seeds) and eGeMAPS + ridge 0.750 and 0.774.
A non-linear head trained by a few hundred steps of 1 - CCC on 180-240 clips does not find what a linear model
with a well-chosen L2 penalty finds; the closed form finds it exactly, in well under a second, with nothing to
tune but the penalty. (``docs/audio_llm.md`` has the measurements.)

Rescaled for CCC (``rescale=True``). Ridge shrinks its predictions toward the mean, and CCC punishes a spread
that is too narrow: for a given correlation, CCC is highest when the predictions spread as widely as the
targets. So each output's weights are multiplied by ``std(targets) / std(leave-one-out predictions)`` on train
(out-of-sample predictions: the in-sample ones spread too widely), and the penalty is then chosen on the
rescaled predictions. Measured on dev, clip means of all Whisper tiny.en layers, against the plain ridge:
arousal / valence / dominance CCC 0.832 / 0.517 / 0.403 vs 0.823 / 0.497 / 0.313 (demo corpus) and
0.769 / 0.583 / 0.511 vs 0.760 / 0.585 / 0.434 (corpus 2).

The fit keeps everything in the module's buffers, so ``state_dict`` / safetensors carry it like any weight;
nothing here is trained by gradient steps. ``fit`` takes train features and targets, and dev ones to choose
the penalty per attribute by dev CCC; without dev it is chosen by the CCC of the leave-one-out predictions on
train (exact for ridge, from one SVD). Rows whose target is NaN (a clip without that attribute) are left out
of that attribute's fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class RidgeReadout(nn.Module):
    """``outputs`` linear regressions on standardised features; ``forward`` (B, F) -> (B, outputs)."""

    def __init__(self, input_size: int, outputs: int = 3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_size))
        self.register_buffer("scale", torch.ones(input_size))
        self.register_buffer("weight", torch.zeros(input_size, outputs))
        self.register_buffer("bias", torch.zeros(outputs))
        self.register_buffer("alpha", torch.zeros(outputs))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("the ridge readout has not been fitted: training fits it before stage 1 "
                               "(llmser.training.readout.fit_readout); a saved model carries the fitted one")
        z = (features.float() - self.mean) / self.scale
        return z @ self.weight + self.bias

    @torch.no_grad()
    def fit(self, features: torch.Tensor, targets: torch.Tensor, dev_features: torch.Tensor | None = None,
            dev_targets: torch.Tensor | None = None, *, alphas: Sequence[float], rescale: bool) -> list[dict]:
        """Fit every output on (N, F) features and (N, outputs) targets, trying each penalty in ``alphas`` (the
        audio-LLM's grid is ``model.readout_alphas``), rescaled for CCC when ``rescale`` (``model.readout_rescale``);
        returns per output the penalty chosen, the score that chose it (``dev_ccc`` or ``loo_ccc``) and the
        ``scale`` applied (1.0 without rescaling)."""
        if features.ndim != 2 or targets.ndim != 2 or targets.shape != (features.shape[0], self.weight.shape[1]):
            raise ValueError(f"ridge readout: features must be (N, {self.weight.shape[0]}) and targets (N, "
                             f"{self.weight.shape[1]}), got {tuple(features.shape)} and {tuple(targets.shape)}")
        if not alphas or min(alphas) <= 0:
            raise ValueError(f"ridge readout: the penalties to try must be positive numbers, got {list(alphas)}")
        # Memory: one float64 copy of each split, standardised in place, then per set of rows one SVD (the
        # outputs with the same rows share it); RidgeReadout.fit_bytes counts it.
        z = features.double()
        mean, scale = z.mean(0), z.std(0, unbiased=False)
        scale = torch.where(scale > 1e-8, scale, torch.ones_like(scale))  # a constant feature stays 0
        z.sub_(mean).div_(scale)
        dev_z = dev_features.double().sub_(mean).div_(scale) if dev_features is not None else None
        bases: dict[bytes, _RidgeBasis] = {}
        report = []
        for k in range(targets.shape[1]):
            keep = torch.isfinite(targets[:, k])
            if int(keep.sum()) < 3:
                raise ValueError(f"ridge readout: output {k} has {int(keep.sum())} train rows with a target; it needs "
                                 "at least 3 (does the train split carry the attribute labels?)")
            rows = keep.numpy().tobytes()
            if rows not in bases:
                bases[rows] = _RidgeBasis(z if bool(keep.all()) else z[keep])
            path = _RidgePath(bases[rows], targets[keep, k].double(), rescale=rescale)
            choice = self._choose(path, alphas, dev_z, dev_targets[:, k] if dev_targets is not None else None)
            weight, bias = path.solution(choice["alpha"])
            choice["scale"] = path.scale(choice["alpha"])
            self.weight[:, k] = weight.to(self.weight)
            self.bias[k] = float(bias)
            self.alpha[k] = choice["alpha"]
            report.append(choice)
        self.mean.copy_(mean.to(self.mean))
        self.scale.copy_(scale.to(self.scale))
        self.fitted.fill_(True)
        return report

    @staticmethod
    def fit_bytes(train_rows: int, dev_rows: int, features: int) -> dict[str, float]:
        """Host memory of :meth:`fit` (and of holding its inputs), in bytes, for the common case of every train
        row carrying every target (a missing attribute adds a float64 copy of the rows that have it).

        ``tensors``: what ``llmser.planning.measure.LiveStorage`` counts over the fit (held inputs aside): the
        float64 copies of train and dev, the centred copy the SVD reads, and its U and Vh (K = min(N, F));
        measured within 1.5% of it (``tests/test_readout.py`` allows 3%). ``inputs``: the float32 clip means
        the fit reads.
        ``lapack``: the SVD's own copy of its input and its workspace (~4 K^2 doubles), which no tensor shows.
        ``total``: their sum, the process's peak resident memory above what it held before: measured / planned
        1.01, 0.97, 1.01, 1.01 for N x F (dev rows) = 6,000 x 1,500 (2,000), 1,500 x 6,000 (500), 240 x 1,920 (80,
        the demo's) and 10,000 x 1,280 (3,000), on the 2-core CPU machine (``scripts/bench_readout_memory.py``)."""
        n, m, f = train_rows, dev_rows, features
        k = min(n, f)
        tensors = 8.0 * (2 * n * f + m * f + n * k + k * f)
        inputs = 4.0 * (n + m) * f
        lapack = 8.0 * (n * f + 4 * k * k)
        return {"inputs": inputs, "tensors": tensors, "lapack": lapack, "total": inputs + tensors + lapack}

    @staticmethod
    def _choose(path: _RidgePath, alphas: Sequence[float], dev_z: torch.Tensor | None,
                dev_y: torch.Tensor | None) -> dict:
        if dev_z is not None and dev_y is not None and int(torch.isfinite(dev_y).sum()) >= 3:
            keep = torch.isfinite(dev_y)
            scores = {}
            for alpha in alphas:
                weight, bias = path.solution(alpha)
                scores[alpha] = concordance(dev_z[keep] @ weight + bias, dev_y[keep].double())
            best = max(scores, key=lambda a: scores[a])  # ties: the first, i.e. the smallest penalty listed
            return {"alpha": float(best), "dev_ccc": scores[best]}
        scores = {alpha: concordance(path.leave_one_out(alpha), path.y) for alpha in alphas}
        best = max(scores, key=lambda a: scores[a])
        return {"alpha": float(best), "loo_ccc": scores[best]}


class _RidgeBasis:
    """One thin SVD of the centred standardised features: every output fitted on the same rows reuses it."""

    def __init__(self, z: torch.Tensor):
        self.z_mean = z.mean(0)
        self.u, self.s, vh = torch.linalg.svd(z - self.z_mean, full_matrices=False)
        self.v = vh.T


class _RidgePath:
    """Ridge solutions for any penalty from the SVD of the standardised features (intercept by centring); with
    ``rescale`` every solution's weights are stretched by :meth:`scale` (the predictions' mean is kept). Takes
    the features ``z`` themselves or a :class:`_RidgeBasis` of them."""

    def __init__(self, z: torch.Tensor | _RidgeBasis, y: torch.Tensor, rescale: bool = False):
        basis = z if isinstance(z, _RidgeBasis) else _RidgeBasis(z)
        self.rescale = rescale
        self.y, self.y_mean = y, y.mean()
        self.z_mean, self.u, self.s, self.v = basis.z_mean, basis.u, basis.s, basis.v
        self.uy = self.u.T @ (y - self.y_mean)
        self._scales: dict[float, float] = {}  # penalty -> rescaling; each costs a leave-one-out pass

    def solution(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(F,) weights and the intercept on standardised (not re-centred) features."""
        weight = self.v @ (self.s / (self.s ** 2 + alpha) * self.uy) * self.scale(alpha)
        return weight, self.y_mean - self.z_mean @ weight

    def scale(self, alpha: float) -> float:
        """The CCC rescaling of penalty ``alpha``: std(y) / std(leave-one-out predictions), 1.0 when not rescaling
        (or when the out-of-sample predictions do not vary: nothing to stretch)."""
        if not self.rescale:
            return 1.0
        if alpha not in self._scales:
            spread = float(self._plain_leave_one_out(alpha).std(unbiased=False))
            self._scales[alpha] = float(self.y.std(unbiased=False)) / spread if spread > 1e-12 else 1.0
        return self._scales[alpha]

    def leave_one_out(self, alpha: float) -> torch.Tensor:
        """Exact leave-one-out predictions, ``y - residual / (1 - leverage)`` with the intercept's 1/N in the
        leverage; where the path rescales they are stretched about the target mean by :meth:`scale` (the scale
        of all of train standing in for each left-out fit's own)."""
        plain = self._plain_leave_one_out(alpha)
        return self.y_mean + self.scale(alpha) * (plain - self.y_mean) if self.rescale else plain

    def _plain_leave_one_out(self, alpha: float) -> torch.Tensor:
        shrink = self.s ** 2 / (self.s ** 2 + alpha)
        fitted = self.u @ (shrink * self.uy) + self.y_mean
        leverage = (self.u ** 2) @ shrink + 1.0 / self.y.numel()
        return self.y - (self.y - fitted) / (1.0 - leverage).clamp(min=1e-6)


def concordance(pred: torch.Tensor, true: torch.Tensor) -> float:
    """The challenge's CCC (``llmser.evaluation.metrics.ccc``) of two 1-D tensors."""
    from llmser.evaluation.metrics import ccc

    return float(ccc(true.cpu().numpy(), pred.cpu().numpy()))
