"""What fine-tuning keeps: keep-best's epoch, the WiSE-FT mix of the probe and the fine-tuned
weights (`interpolate`), and the probes the kept model must still beat on validation: the probe on
more feature layers (`unless_wider_probe`) and a probe that the task ranks by another metric than
keep-best follows (`unless_probe_ranks_higher`). Every process keeps the same model: the choices
are rank 0's (`decide_challenger`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..distributed import ranks
from ..heads import GraftModel
from . import interpolate
from .callbacks import KeepBest
from .evaluation import logits_of, metrics_of
from .job import Job, Outcome, monitored
from .probe import probe_head, restored, starts_from_probe

Weights = dict[str, torch.Tensor]


@dataclass
class Finetuned:
    """Fine-tuning's end, which the keep steps weigh."""

    model: GraftModel  # trained in place; ends with the kept weights
    val_set: Any
    history: list[dict[str, Any]]
    train_seconds: float
    n_train: int


@dataclass(frozen=True)
class Line:
    """WiSE-FT's line between the probe's weights (`start`, score `start_score`) and the fine-tuned ones."""

    start: Weights
    trained: Weights  # the last epoch's
    start_score: float


def cpu_weights(model: nn.Module) -> Weights:
    """A copy of the model's weights on the CPU: a candidate kept while the model trains on."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def decide_challenger(bar: float, score: float) -> bool:
    """Whether a probe's validation score (`bar`) beats the kept model's: rank 0's answer, for
    every process."""
    return bool(ranks.from_main(bar > score))


def probes_to_beat(job: Job, probe: Outcome | None) -> tuple[Job, Outcome | None, Outcome | None]:
    """The job, the probe fine-tuning starts from and is measured against (run here when the plan
    probes first and none ran), and the probe on more feature layers where it kept those, which the
    fine-tuned model must also beat on validation (`unless_wider_probe`)."""
    if probe is None and starts_from_probe(job):
        probe = probe_head(job)
        job = job.after(probe)
    result = probe.result if probe is not None else None
    if result is None or result.more_layers is None or result.fewest_layers is None:
        return job, probe, None
    fewest = _fewest_layers(job, result.fewest_layers)
    return job.after(fewest), fewest, result.more_layers


def _fewest_layers(job: Job, fewest: Outcome) -> Outcome:
    """Fine-tuning trains on the features it would have without the probe's choice (the last
    layer's), starting from, and measured against, the probe on those: richer frozen features are
    the probe's model alone. With the wider probe as fine-tuning's start and bar, `auto` stopped
    SST-2 (3,000 sentences) after 2 epochs, one validation example behind it, and kept a probe 3.8
    points below the fine-tuned model."""
    on = job.modality.feature_choice_name(job.prep, fewest.layers)
    job.log(f"fine-tuning: on {on}, from the probe on those")
    return restored(job, fewest, plan="notes")


def probe_weights(
    job: Job, model: GraftModel, probe: Outcome | None, continues: bool, candidate: Weights | None
) -> Weights | None:
    """The probe as weights of the whole model (the pretrained body with the probe's head), the
    start of the line `interpolate` walks; None without a probe or with --interpolate off."""
    if probe is None or job.config.interpolate == "off":
        return None
    return cpu_weights(model) if continues else candidate


def probes_as_weights(
    job: Job, model: GraftModel, probe: Outcome | None, wider: Outcome | None, candidate: Weights | None
) -> tuple[Weights | None, Weights | None]:
    """The weights fine-tuning's end is measured against, taken before it trains: the pretrained
    body for a wider probe (`unless_wider_probe`), and the probe as a whole model (that body, the
    probe's head) where fine-tuning continues from a probe the modality needs (a bi-encoder's
    cosine, the zero-shot similarity) and the task ranks models by another metric than the one
    keep-best follows (a regression: Spearman against R2; `unless_probe_ranks_higher`). None where
    there is none."""
    ranks = probe is not None and job.modality.fine_tunes_from_probe(job.prep)  # a bi-encoder's cosine
    ranks = ranks and job.task.ranking(probe.result.val, len(job.splits.val))[0] != job.task.monitor
    if wider is None and not ranks:
        return None, None
    weights = candidate if candidate is not None else cpu_weights(model)
    return (weights if wider is not None else None), (weights if ranks else None)


def kept_weights(
    job: Job, end: Finetuned, keep: KeepBest, probe: Outcome | None, start: Weights | None
) -> dict[str, Any]:
    """Keep-best's epoch loaded into the model, then (after a probe) the WiSE-FT mix of the probe
    (`start`) and the fine-tuned weights: what the model ends with, and why."""
    history, model = end.history, end.model
    trained = cpu_weights(model) if start is not None and probe is not None and history else None
    kept = keep.restore(model, history[-1]["epoch"] if history else 0)
    if trained is not None:
        line = Line(start, trained, float(probe.result.val[job.task.monitor]))
        kept["interpolation"] = _interpolate(job, end, line, kept)
    return kept


def _interpolate(job: Job, end: Finetuned, line: Line, kept: dict[str, Any]) -> dict[str, Any]:
    """WiSE-FT between the probe and the fine-tuned weights (the kept epoch's, or the last epoch's
    when keep-best kept the probe), by the validation score (`interpolate.choose_alpha`); a step
    along the line only while the clock affords it (`Clock.decide_affords`)."""
    model, monitor = end.model, monitored(job.task)
    if kept["epoch"] == 0:  # keep-best kept the probe: the line runs to the last epoch
        weights, end_score = line.trained, end.history[-1][monitor]
    else:
        weights, end_score = cpu_weights(model), kept[monitor]

    def score_of(m: nn.Module) -> float:
        return float(job.task.validation_row(logits_of(m, end.val_set), end.val_set.labels)[monitor])

    ends = {0.0: line.start_score, 1.0: float(end_score)}
    kept_end = 0.0 if kept["epoch"] == 0 else 1.0  # ties go to the model keep-best kept
    affords = job.clock.decide_affords
    choice = interpolate.choose_alpha(model, line.start, weights, ends, score_of, affords, kept_end)
    shown, what = choice.pop("line"), job.task.monitor_short
    job.log(f"weight interpolation (WiSE-FT), {what} by fine-tuned share: {shown}; kept {choice['alpha']:g}")
    return choice


def unless_wider_probe(
    job: Job, model: GraftModel, wider: Outcome | None, start: Weights | None, kept: dict[str, Any]
) -> tuple[Job, dict[str, Any]]:
    """The kept model, unless the probe that kept more feature layers (`wider`) has the better
    validation score (ties go to the kept model): then the pretrained body (`start`), pooling
    those layers, with that probe's head, so the run never ends below its best probe on
    validation; the job then as that probe left it. Fine-tuning's own bar (keep-best,
    `BehindProbe`) is the probe on its features."""
    monitor = monitored(job.task)
    mix = kept.get("interpolation")
    score = mix["scores"][str(mix["alpha"])] if mix else kept.get(monitor)
    if wider is None or start is None or score is None:
        return job, kept
    bar = float(wider.result.val[job.task.monitor])
    if not decide_challenger(bar, float(score)):
        return job, kept
    model.load_state_dict(start)  # the body as pretrained (the head is replaced next)
    job = job.after(restored(job, wider, plan="none"))  # the body's layers, the head, the task; notes stay
    model.head = wider.head
    what, shown = job.task.monitor_short, f"{bar:.4f} against {float(score):.4f}"
    line = f"the probe on {job.modality.feature_choice_name(job.prep, wider.layers)} is kept: {what} {shown}"
    job.log(line)
    return job, {"epoch": 0, monitor: bar, "reason": line + " (the fine-tuned model's)"}


def unless_probe_ranks_higher(
    job: Job, end: Finetuned, probe: Outcome | None, weights: Weights | None, kept: dict[str, Any]
) -> dict[str, Any]:
    """The kept model, unless the probe ranks higher on validation by the task's own ranking (a
    regression's Spearman, where keep-best followed R2): then the probe (`weights`), so a run never
    ends below its probe on that metric. For a bi-encoder's cosine that probe is the encoder's
    zero-shot similarity, calibrated: what using the encoder untrained would score."""
    if probe is None or weights is None or kept.get("epoch") == 0:
        return kept
    n_val, model = len(job.splits.val), end.model
    metric, bar, _ = job.task.ranking(probe.result.val, n_val)
    score = job.task.ranking(metrics_of(model, end.val_set, job.task), n_val)[1]
    if not decide_challenger(bar, score):
        return kept
    model.load_state_dict(weights)
    line = f"the probe is kept: validation {metric} {bar:.4f} against the fine-tuned model's {score:.4f}"
    job.log(line)
    return {"epoch": 0, monitored(job.task): probe.result.val[job.task.monitor], "reason": line}


def kept_line(kept: dict[str, Any]) -> str:
    alpha = (kept.get("interpolation") or {}).get("alpha", None)
    if alpha is not None and 0 < alpha < 1:
        ends = "the probe and " + ("the last epoch" if kept["epoch"] == 0 else f"epoch {kept['epoch']}")
        return f"a mix of {ends}, {alpha:g} of the fine-tuned weights"
    if kept["epoch"] == 0:
        return "the probe"
    return f"epoch {kept['epoch']}" + (" (the last)" if "last epoch has" in kept["reason"] else "")

