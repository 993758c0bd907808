"""Fine-tuning (strategies finetune and gradual) end to end on tiny synthetic folders: exact --resume,
frozen BatchNorm, discriminative learning rates, gradual unfreezing, --time-budget and the CLI."""

from __future__ import annotations

import io
import json
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_image_folder, spy_on_training_loops
from safetensors.torch import load_file
from torch import nn

from graft.backbones import create_backbone
from graft.cli import main
from graft.config import TrainConfig, parse_duration
from graft.modalities import image as image_modality
from graft.runner import RunResult, run
from graft.training import finetune, timing
from graft.training.checkpoint import Checkpointer
from graft.training.loop import apply_stage
from graft.training.strategies import HEAD, Stage

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
BUDGET = 8.0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8 images per class of 3 classes: 21 training and 3 validation images."""
    return make_image_folder(tmp_path_factory.mktemp("ft") / "data", per_class=8, seed=0)


def _config(data: Path, **kw: Any) -> TrainConfig:
    # one head-only epoch (the probe), then one that trains the backbone
    base = {"data": str(data), "strategy": "finetune", "epochs": 1, "image_size": 32, "batch_size": 4}
    return TrainConfig(**(base | kw))


def _epoch_lines(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("epoch ")]


# --------------------------------------------------------------------------- resume


def _interrupt(config: TrainConfig, after_epochs: int) -> None:
    """Run `config` and press Ctrl-C right after the checkpoint of epoch `after_epochs` is written."""
    real_save, calls = Checkpointer.save, []

    def save_then_interrupt(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == after_epochs:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpointer, "save", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run(config, log=lambda line: None)


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory) -> tuple[TrainConfig, Path]:
    """A finetune run of a probe + 2 epochs (one DataLoader worker process) stopped right after its
    epoch-1 checkpoint."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    config = _config(data, epochs=3, out=str(out), augment="light")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(image_modality, "default_workers", lambda: 1)
        _interrupt(config, after_epochs=1)
    return config, out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_interrupted_run_leaves_an_epoch_1_checkpoint_and_no_bundle(interrupted):
    """Ctrl-C after epoch 1 leaves checkpoint.{safetensors,json} at epoch 1 and no half bundle."""
    _, out = interrupted
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    assert (out / "checkpoint.safetensors").is_file()
    assert not (out / "model.safetensors").exists() and not (out / "graft.json").exists()
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


@pytest.mark.slow  # the default suite's tests/test_interrupt.py resumes bit-identically from 5 kill points
def test_resume_ends_with_the_weights_of_an_uninterrupted_run(interrupted, tmp_path, monkeypatch):
    """An uninterrupted run and interrupt-after-epoch-1 + --resume give bit-identical model.safetensors."""
    config, out = interrupted
    resumed_dir = _copy(out, tmp_path / "resumed")
    lines: list[str] = []
    monkeypatch.setattr(image_modality, "default_workers", lambda: 1)  # augmentation in a worker process
    resumed = run(replace(config, out=str(resumed_dir), resume=True), log=lines.append)
    straight = run(replace(config, out=str(tmp_path / "straight")), log=lambda line: None)

    assert _epoch_lines(lines) == ["2/2"]  # it really resumed: only the last epoch was trained
    a = load_file(str(straight.run_dir / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"
    keys = ("epoch", "stage", "train_loss", "val_loss", "lr")
    assert [{k: r[k] for k in keys} for r in resumed.report["history"]] == [
        {k: r[k] for k in keys} for r in straight.report["history"]
    ]
    for run_dir in (straight.run_dir, resumed.run_dir):
        assert not list(run_dir.rglob("*.pt")) and not list(run_dir.rglob("*.pkl"))


def test_resume_across_the_unfreeze_boundary_without_workers(data, tmp_path, monkeypatch):
    """gradual, interrupted after its head-only epoch, in-process loading: --resume matches exactly."""
    monkeypatch.setattr(image_modality, "default_workers", lambda: 0)  # augmentation on the main RNG
    config = _config(data, strategy="gradual", epochs=2, out=str(tmp_path / "resumed"))
    _interrupt(config, after_epochs=1)
    lines: list[str] = []
    resumed = run(replace(config, resume=True), log=lines.append)
    straight = run(replace(config, out=str(tmp_path / "straight")), log=lambda line: None)
    assert _epoch_lines(lines) == ["2/2"]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_resume_with_a_changed_setting_names_it(interrupted, tmp_path):
    """--resume with another --lr than the checkpoint: run() raises ValueError naming it."""
    config, out = interrupted
    copy = _copy(out, tmp_path / "run")
    with pytest.raises(ValueError, match=r"different settings \(lr\)"):
        run(replace(config, out=str(copy), resume=True, lr=0.01), log=lambda line: None)


@pytest.mark.parametrize(("setting", "value"), [("augment", "none"), ("lr_mult", 3.0), ("seed", 1)])
def test_resume_key_names_any_changed_setting(interrupted, setting, value):
    """The key the runner checks a checkpoint against (finetune.resume_key): the checkpoint of the
    interrupted run refuses another augment / lr_mult / seed by name and accepts the same command
    (the end-to-end refusal is the --lr test above; this one costs no training)."""
    config, out = interrupted
    plan = replace(_plan_stub(), strategy=config.strategy)
    model = torch.nn.Linear(1, 1)  # never loaded: the settings are compared first
    changed = Checkpointer(out, finetune.resume_key(replace(config, **{setting: value}), plan), resume=True)
    with pytest.raises(ValueError, match=rf"different settings \({setting}\)"):
        changed.restore(model, torch.optim.AdamW(model.parameters()))
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["config"] == finetune.resume_key(config, plan)  # the same command matches exactly


def test_options_added_later_stay_out_of_the_resume_key_at_their_defaults():
    """A checkpoint written before an option existed resumes under the option's default; another
    value is a setting the checkpoint must share."""
    config, plan = TrainConfig(data="x"), _plan_stub()
    later = {"resize", "task", "label_separator", "feature_layers", "image_column"}
    assert later.isdisjoint(finetune.resume_key(config, plan))
    assert finetune.resume_key(replace(config, feature_layers="4"), plan)["feature_layers"] == "4"


def _plan_stub():
    from graft.config import Plan

    return Plan("image", "efficientnet_lite0", "finetune", "given", 4, 4, 1e-3, 1, "cpu")


def test_resume_without_out_is_refused(data):
    """--resume without --out raises ValueError (there is no run folder to resume)."""
    with pytest.raises(ValueError, match="--out"):
        run(_config(data, resume=True), log=lambda line: None)


# --------------------------------------------------------------------------- BatchNorm


def _bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if k.endswith(BN_STATS)}


@pytest.fixture(scope="module")
def lite0():
    """The packaged EfficientNet-Lite0 backbone as every run starts from it (never trained here)."""
    return create_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def pretrained_body(lite0) -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 body's state, as every run starts from it."""
    return {k: v.clone() for k, v in lite0.body.state_dict().items()}


def _last_epoch_body(out: Path) -> dict[str, torch.Tensor]:
    """The body's weights after the last epoch (the checkpoint; the bundle may hold the probe's)."""
    saved = load_file(str(out / "checkpoint.safetensors"))
    return {k.removeprefix("model.body."): v for k, v in saved.items() if k.startswith("model.body.")}


def test_frozen_bn_keeps_pretrained_statistics_exactly(data, tmp_path, pretrained_body):
    """bn=frozen: the probe, then an epoch that trains every group; the body's BN running
    statistics stay exactly the pretrained ones while its weights (BN scale and shift included) train."""
    out = tmp_path / "run"
    result = run(_config(data, keep_checkpoint=True, out=str(out)), log=lambda line: None)
    body = _last_epoch_body(out)
    stats = [k for k in body if k.endswith(BN_STATS)]
    assert len(stats) > 30
    assert all(torch.equal(body[k], pretrained_body[k]) for k in stats)
    assert not torch.equal(body["conv_stem.weight"], pretrained_body["conv_stem.weight"])
    assert not torch.equal(body["bn1.weight"], pretrained_body["bn1.weight"])
    assert [row["stage"] == [HEAD] for row in result.report["history"]] == [True, False]


def test_trainable_bn_updates_statistics_also_in_groups_that_stay_frozen(data, tmp_path, pretrained_body):
    """bn=trainable with only the top group training (--train-groups 1): BN running statistics
    change everywhere, the stem's included, but the stem's weights do not."""
    out = tmp_path / "run"
    config = _config(data, bn="trainable", train_groups=1, keep_checkpoint=True, out=str(out))
    run(config, log=lambda line: None)
    body = _last_epoch_body(out)
    assert not torch.equal(body["bn1.running_mean"], pretrained_body["bn1.running_mean"])
    assert body["bn1.num_batches_tracked"] > pretrained_body["bn1.num_batches_tracked"]
    for key in ("conv_stem.weight", "bn1.weight", "bn1.bias"):
        assert torch.equal(body[key], pretrained_body[key]), key
    assert not torch.equal(body["conv_head.weight"], pretrained_body["conv_head.weight"])


def _toy() -> tuple[nn.Module, list[tuple[str, list[nn.Parameter]]]]:
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 2), nn.BatchNorm1d(2))
    model = nn.Sequential(body, head)
    groups = [
        ("stem", list(body[:2].parameters())),
        ("block", list(body[2:].parameters())),
        (HEAD, list(head.parameters())),
    ]
    return model, groups


def test_apply_stage_head_only_freezes_body_and_puts_its_bn_in_eval():
    """Stage({head}): body params frozen, body BN in eval mode, head (incl. its BN, dropout) training."""
    model, groups = _toy()
    model.eval()
    apply_stage(model, groups, Stage({HEAD: 1.0}), bn_frozen=True)
    body, head = model
    assert not any(p.requires_grad for p in body.parameters())
    assert all(p.requires_grad for p in head.parameters())
    assert not body[1].training and not body[3].training
    assert all(m.training for m in head.modules())


def test_apply_stage_unfreezes_named_groups_and_bn_trainable_keeps_train_mode():
    """A stage with block+head unfreezes just those; bn_frozen keeps every pretrained BN in eval mode
    (the trained block's too) and the head's new BN training; bn_frozen=False puts all BN in train mode."""
    model, groups = _toy()
    body, head = model
    apply_stage(model, groups, Stage({"block": 0.5, HEAD: 1.0}), bn_frozen=True)
    assert [p.requires_grad for p in body.parameters()] == [False] * 4 + [True] * 4
    assert (body[1].training, body[3].training, head[3].training) == (False, False, True)
    apply_stage(model, groups, Stage({HEAD: 1.0}), bn_frozen=False)
    assert not any(p.requires_grad for p in body.parameters())
    assert body[1].training and body[3].training


# --------------------------------------------------------------------------- learning rates


@dataclass
class Steps:
    """Per AdamW step: each param group's (name, lr, all params trainable); epoch ends from the log."""

    rows: list[list[tuple[str, float, bool]]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def log(self, line: str) -> None:
        if line.startswith("epoch "):
            self.ends.append(len(self.rows))

    def epoch(self, i: int) -> list[list[tuple[str, float, bool]]]:
        return self.rows[(self.ends[i - 1] if i else 0) : self.ends[i]]


@pytest.fixture
def steps() -> Iterator[Steps]:
    """Records every AdamW step's param groups for the duration of one test."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    record = Steps()

    def hook(optimizer, args, kwargs):
        if isinstance(optimizer, torch.optim.AdamW):
            groups = optimizer.param_groups
            record.rows.append(
                [(g["name"], g["lr"], all(p.requires_grad for p in g["params"])) for g in groups]
            )

    handle = register_optimizer_step_pre_hook(hook)
    yield record
    handle.remove()


def _by_name(step: list[tuple[str, float, bool]]) -> dict[str, tuple[float, bool]]:
    out: dict[str, tuple[float, bool]] = {}
    for name, lr, trainable in step:  # decay and no-decay halves of a group must agree
        assert out.setdefault(name, (lr, trainable)) == (lr, trainable), name
    return out


def test_discriminative_rates_are_geometric_from_stem_to_head(data, tmp_path, steps):
    """finetune: the head-only phase steps only the head; then head/stem LR = lr_mult, geometric."""
    result = run(_config(data, lr_mult=25.0, out=str(tmp_path / "run")), log=steps.log)
    names = [*result.report["backbone"]["groups"], HEAD]
    probe = [step for step in steps.rows if {n for n, _, _ in step} == {HEAD}]
    unfrozen = steps.rows[len(probe) :]
    assert probe and all(_by_name(step)[HEAD][1] for step in probe)
    assert len(unfrozen) == 5  # 1 epoch after the head-only one: 21 images at batch 4, last partial dropped

    ratio = 25.0 ** (1 / (len(names) - 1))
    for step in unfrozen:
        lrs = _by_name(step)
        assert list(lrs) == names
        assert all(trainable for _, trainable in lrs.values())
        assert lrs[HEAD][0] / lrs["stem"][0] == pytest.approx(25.0, rel=1e-9)
        for lower, upper in zip(names, names[1:], strict=False):
            assert lrs[upper][0] / lrs[lower][0] == pytest.approx(ratio, rel=1e-9), (lower, upper)


@dataclass
class CliRun:
    out: Path
    stdout: str
    stderr: str
    code: int
    cache: Path


@pytest.fixture(scope="module")
def cli_finetune(data, tmp_path_factory) -> CliRun:
    """`graft train DATA --strategy finetune --epochs 2 --image-size 32 --batch-size 4 --json`: a
    probe, then one epoch of everything, with its own feature cache."""
    root = tmp_path_factory.mktemp("cli-finetune")
    argv = ["train", str(data), "--strategy", "finetune", "--epochs", "1", "--image-size", "32"]
    argv += ["--batch-size", "4", "--out", str(root / "run"), "--json", "--keep-checkpoint"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(stdout), redirect_stderr(stderr):
        mp.setenv("GRAFT_CACHE_DIR", str(root / "cache"))
        mp.setattr(warnings, "formatwarning", warnings.formatwarning)
        code = main(argv)
    return CliRun(root / "run", stdout.getvalue(), stderr.getvalue(), code, root / "cache")


def test_head_only_phase_is_a_probe_on_cached_features(cli_finetune, data, tmp_path, monkeypatch):
    """finetune's head-only epoch is a linear probe on cached features: history row 0 is the head alone
    and scores exactly what `--strategy linear` with the same settings scores (the same validation
    loss), and that linear run takes its features from the cache the probe filled."""
    assert cli_finetune.code == 0, cli_finetune.stderr
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(cli_finetune.cache))
    linear = TrainConfig(data=str(data), strategy="linear", image_size=32, out=str(tmp_path / "linear"))
    probe = run(linear, log=lambda line: None)
    first = json.loads((cli_finetune.out / "report.json").read_text())
    row0, row1 = first["history"]
    assert (row0["epoch"], row0["stage"]) == (0, [HEAD]) and len(row1["stage"]) > 1
    last = probe.report["history"][-1]
    assert row0["val_loss"] == pytest.approx(last["val_loss"], rel=1e-6, abs=1e-9)
    assert row0["val_accuracy"] == last["val_accuracy"]
    assert not first["timing"]["feature_cache_hit"] and probe.report["timing"]["feature_cache_hit"]


def test_gradual_unfreezes_one_more_group_from_the_top_each_epoch(data, tmp_path, steps):
    """gradual: in epoch k exactly the head and the top k-1 groups train, each LR cycle restarting."""
    result = run(_config(data, strategy="gradual", epochs=3, out=str(tmp_path / "run")), log=steps.log)
    groups = result.report["backbone"]["groups"]
    assert len(steps.ends) == 3
    for k, row in enumerate(result.report["history"]):
        expected = {HEAD, *groups[len(groups) - k :]} if k else {HEAD}
        assert set(row["stage"]) == expected and len(expected) == k + 1
        for step in steps.epoch(k):
            lrs = _by_name(step)
            assert {n for n, (_, trainable) in lrs.items() if trainable} == expected
            assert {n for n, (lr, _) in lrs.items() if lr > 0} == expected
    first_head_lr = [_by_name(steps.epoch(k)[0])[HEAD][0] for k in range(3)]
    assert first_head_lr[0] == first_head_lr[1] == first_head_lr[2]  # one slanted cycle per stage


# --------------------------------------------------------------------------- time budget


@dataclass
class BudgetRun:
    result: RunResult
    seconds: float  # the whole run, from outside
    loop_seconds: float  # from the start of the run to the end of the training loop
    lines: list[str]


@pytest.fixture(scope="module")
def budget_run(data, tmp_path_factory) -> BudgetRun:
    """One finetune run with --time-budget 8s, no --epochs and no head-only probe (--freeze-epochs 0:
    the clock alone sizes the schedule), timed from outside; a spy on the loop records when it ends.
    One-off process costs are paid first (the plotting import, the first training step's kernel
    set-up): they are no part of a schedule and would dominate so short a budget."""
    import matplotlib.pyplot  # noqa: F401

    warm = create_backbone("efficientnet_lite0").body.to(memory_format=torch.channels_last)
    warm(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)).sum().backward()
    out = tmp_path_factory.mktemp("budget") / "run"
    lines: list[str] = []
    config = _config(data, epochs=None, freeze_epochs=0, time_budget=BUDGET, out=str(out))
    with pytest.MonkeyPatch.context() as mp:
        loop_ends = spy_on_training_loops(mp)
        started = time.perf_counter()
        result = run(config, log=lines.append)
        seconds = time.perf_counter() - started
    return BudgetRun(result, seconds, loop_ends[-1] - started, lines)


@pytest.mark.timing
def test_time_budget_is_kept_and_the_bundle_is_complete(budget_run):
    """--time-budget: as ratios of the budget (robust to a slow or busy machine), training stops by
    the deadline (10% for the last step and its checkpoint), the whole run (final evaluation,
    bundle, report, plots) overruns it by at most 25%, and at least 60% of it trains; the bundle is
    complete."""
    loop_ratio = budget_run.loop_seconds / BUDGET
    run_ratio = budget_run.seconds / BUDGET
    assert loop_ratio <= 1.10, f"training ran {loop_ratio:.2f}x the budget"
    assert run_ratio <= 1.25, f"the run took {run_ratio:.2f}x the budget"
    out = budget_run.result.run_dir
    for name in ("model.safetensors", "graft.json", "report.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert len(report["history"]) >= 2 and report["validation"]["n"] == 3
    assert report["config"]["time_budget"] == BUDGET
    assert any(line.startswith(f"time budget {BUDGET:.0f}s") for line in budget_run.lines)
    assert loop_ratio >= 0.6, f"training used only {loop_ratio:.2f} of the budget"


@pytest.mark.timing
def test_time_budget_schedule_anneals_by_the_deadline(budget_run):
    """Under --time-budget the one-cycle follows the clock: the LR has annealed when training stops."""
    history = budget_run.result.report["history"]
    assert history[-1]["lr"] <= 0.05 * 1e-3, f"final LR {history[-1]['lr']:.2e} after {len(history)} epochs"


@pytest.mark.timing
def test_time_budget_anneals_even_when_the_step_timing_was_pessimistic(data, tmp_path, monkeypatch):
    """Fault injection: the timed steps read 8x slower than training then runs (a busy moment while
    timing). The deadline, not an epoch count from that timing, ends training: the budget is used
    and the LR has annealed when it stops."""
    real = timing.time_steps
    monkeypatch.setattr(timing, "time_steps", lambda *args, **kwargs: 8 * real(*args, **kwargs))
    loop_ends = spy_on_training_loops(monkeypatch)
    config = _config(data, epochs=None, freeze_epochs=0, time_budget=4.0, out=str(tmp_path / "run"))
    started = time.perf_counter()
    history = run(config, log=lambda line: None).report["history"]
    assert history[-1]["lr"] <= 0.05 * 1e-3, f"final LR {history[-1]['lr']:.2e} after {len(history)} epochs"
    assert (loop_ends[-1] - started) / 4.0 >= 0.6, "training stopped early, at an epoch count from the timing"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("1h", 3600), ("90s", 90), ("3300", 3300), (" 1.5H ", 5400), (None, None)],
)
def test_parse_duration(text, seconds):
    """parse_duration reads plain seconds and s/m/h suffixes."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "10x", "m", "1h30m"])
def test_parse_duration_rejects_bad_input(text):
    """Unparseable durations raise ValueError naming --time-budget."""
    with pytest.raises(ValueError, match="--time-budget"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["", "inf", "nan", "-5m"])
def test_parse_duration_rejects_empty_infinite_and_negative(text):
    """Empty, infinite, NaN and negative durations raise ValueError naming --time-budget."""
    with pytest.raises(ValueError, match="--time-budget"):
        parse_duration(text)


# --------------------------------------------------------------------------- CLI


def test_cli_train_finetune_json(cli_finetune, lite0):
    """`graft train DIR --strategy finetune ... --json`: the summary is the kept model's validation
    score, at least the probe's; fine-tuning changed every layer group of the body (the last epoch's
    checkpoint) and no pretrained BatchNorm statistic; the bundle holds the weights report.json
    says were kept (the probe's head on the pretrained body, or the last epoch)."""
    out = cli_finetune.out
    assert cli_finetune.code == 0, cli_finetune.stderr
    summary = json.loads(cli_finetune.stdout.strip().splitlines()[-1])
    assert summary["run_dir"] == str(out) and summary["strategy"] == "finetune"
    report = json.loads((out / "report.json").read_text())
    probe, tuned = report["history"]
    assert probe["stage"] == [HEAD] and len(tuned["stage"]) == len(lite0.groups) + 1
    assert (summary["accuracy"], summary["macro_f1"]) == (
        report["validation"]["accuracy"],
        report["validation"]["macro_f1"],
    )
    assert summary["accuracy"] >= probe["val_accuracy"] >= 2 / 3  # easy classes: 3 validation images

    pretrained = lite0.body.state_dict()
    saved = load_file(str(out / "checkpoint.safetensors"))
    last = {k.removeprefix("model.body."): v for k, v in saved.items() if k.startswith("model.body.")}
    assert last.keys() == pretrained.keys()
    unchanged = [g for g, names in lite0.groups if all(torch.equal(last[n], pretrained[n]) for n in names)]
    assert unchanged == [], f"fine-tuning left these groups untouched: {unchanged}"
    stats = [k for k in pretrained if k.endswith(BN_STATS)]
    assert stats and all(torch.equal(last[k], pretrained[k]) for k in stats)

    bundle = load_file(str(out / "model.safetensors"))
    kept = report["kept"]["epoch"]
    assert kept in (0, tuned["epoch"])
    expected = pretrained if kept == 0 else last
    differ = [k for k, v in expected.items() if not torch.equal(bundle[f"body.{k}"], v)]
    assert differ == [], f"the bundle's body is not epoch {kept}'s: {differ[:3]}"
