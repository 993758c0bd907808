"""The recipes, by the plan's strategy: `linear` (a probe on the frozen backbone's cached
features, `probe`), `finetune` and `gradual` (`finetune`), and `auto`'s choice between them
(`auto`, which the runner asks first).

One plan for every modality: the modality prepares inputs (training batches, evaluation batches,
features) and the recipe does the rest the same way for images and texts. A recipe reads its
`Job` and returns an `Outcome` (the trained model, the task tuned on validation, the plan with its
notes, the preprocessing kept, and the typed `TrainResult`), which the runner applies once.
"""

from __future__ import annotations

from .finetune import finetune
from .job import Job, Outcome
from .probe import linear_probe, test_on_features


def train(job: Job, probe: Outcome | None = None) -> Outcome:
    """The plan's recipe. A probe that already ran (`auto.choose`) is the linear result (tested
    here) or the first phase of fine-tuning."""
    if job.plan.strategy != "linear":
        return finetune(job, probe)
    if probe is None:
        return linear_probe(job)
    test_on_features(job, probe.result)
    return job.outcome(probe.result)  # the runner applied the probe already
