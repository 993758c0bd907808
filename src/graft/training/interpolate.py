"""Weight-space interpolation of the probe and the fine-tuned model (WiSE-FT, Wortsman et al.
2022): theta(alpha) = (1 - alpha) * probe + alpha * fine-tuned, where "probe" is the pretrained body
with the probe's head and alpha is chosen on validation (0 = the probe, 1 = fine-tuned). Both ends
start from the same pretrained body, so the straight line between them stays in one basin and its
middle often beats both ends; the mix is one set of weights, at no prediction cost.

Which alphas: the paper's default 0.5 first, then 0.75 and 0.25; with the two ends already scored,
five points on the line. The best validation score wins; ties go to the point nearest the end
that keep-best kept (the probe when no epoch beat it, else the fine-tuned weights), so a mix must
beat both ends to replace them. Under --time-budget a point is scored only when twice
the last one's seconds are left, so the sweep never pushes the run past its budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

ALPHAS = (0.5, 0.75, 0.25)  # scored in this order, the paper's default first


Weights = dict[str, torch.Tensor]


def mixed(start: Weights, end: Weights, alpha: float) -> Weights:
    """(1 - alpha) * start + alpha * end for floating-point tensors; the rest (BatchNorm's batch
    counters) as in `end`."""
    out = {}
    for key, value in end.items():
        if value.is_floating_point():
            out[key] = torch.lerp(start[key].to(value.dtype), value, alpha)
        else:
            out[key] = value
    return out


def choose_alpha(
    model: nn.Module,
    start: Weights,
    end: Weights,
    scores: dict[float, float],
    score_of: Callable[[nn.Module], float],
    affordable: Callable[[float], bool],
    prefer: float = 1.0,
) -> dict[str, Any]:
    """Score the ALPHAS between the two ends (`scores` holds the ends' validation scores, keyed 0.0
    and 1.0), load the best mix into `model` and say what was chosen and why. Ties go to the
    alpha nearest `prefer`. `affordable(seconds)`: whether the time left pays for another point
    that takes about `seconds` (the last one's; 0 before the first); every process of a run must
    get the same answer (the caller asks rank 0)."""
    scores = dict(scores)
    last_seconds = 0.0
    for alpha in ALPHAS:
        if not affordable(last_seconds):
            break
        started = time.perf_counter()
        model.load_state_dict(mixed(start, end, alpha))
        scores[alpha] = score_of(model)
        last_seconds = time.perf_counter() - started
    best = max(sorted(scores, key=lambda a: abs(a - prefer)), key=lambda a: scores[a])  # max keeps the first
    model.load_state_dict(mixed(start, end, best))
    shown = ", ".join(f"{a:g}: {scores[a]:.4f}" for a in sorted(scores))
    return {"alpha": best, "scores": {str(a): scores[a] for a in sorted(scores)}, "line": shown}
