"""Per-epoch checkpoints in the run folder (`checkpoint.safetensors` + `checkpoint.json`), for --resume.

Model and optimizer tensors go to safetensors, everything else to JSON: nothing is pickled. The
safetensors file also carries that JSON in its metadata, so it alone (one atomic rename) is a
consistent checkpoint: a kill between the two writes resumes from the newer tensors and their own
state instead of from mismatched halves. checkpoint.json is the readable copy and the run marker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bundle import atomic_write, write_json
from ..errors import BundleError, ConfigError
from .loop import LoopState

TENSORS = "checkpoint.safetensors"
META = "checkpoint.json"


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in sd["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, slots in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


class Checkpointer:
    def __init__(self, run_dir: Path, config: dict[str, Any], resume: bool) -> None:
        self.run_dir, self.config, self.resume = Path(run_dir), config, resume

    def exists(self) -> bool:
        return (self.run_dir / META).is_file() and (self.run_dir / TENSORS).is_file()

    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: LoopState,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        """Model, optimizer and loop state; with fp16's loss scaling, the scaler's state too (its
        scale and growth count: without them a resumed run rescales from the start)."""
        from safetensors.torch import save_file

        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        optim_tensors, optim_meta = _flatten_optimizer(optimizer)
        tensors.update(optim_tensors)
        meta = {
            "epoch": state.epoch,
            "step": state.step,
            "history": state.history,
            "optimizer": optim_meta,
            "config": self.config,
        }
        scaling = scaler.state_dict() if scaler is not None else {}  # empty when not enabled
        if scaling:
            meta["scaler"] = scaling
        embedded = {"step": str(state.step), "state": json.dumps(meta, default=str)}
        atomic_write(self.run_dir / TENSORS, lambda tmp: save_file(tensors, str(tmp), metadata=embedded))
        write_json(self.run_dir / META, meta)

    def files(self) -> list[Path]:
        """checkpoint.json first: removed in this order, a folder never holds half a checkpoint."""
        return [self.run_dir / META, self.run_dir / TENSORS]

    def restore(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None
    ) -> LoopState:
        """The saved state when resuming (and a checkpoint exists), else a fresh one."""
        if not (self.resume and self.exists()):
            return LoopState()
        from safetensors import safe_open
        from safetensors.torch import load_file

        meta = json.loads((self.run_dir / META).read_text())
        with safe_open(str(self.run_dir / TENSORS), framework="pt") as f:
            embedded = f.metadata() or {}
        saved_step = int(embedded.get("step", -1))
        if "state" in embedded:  # the tensors' own state wins: checkpoint.json may lag by one save
            lagging, meta = meta["step"] != saved_step, json.loads(embedded["state"])
            if lagging:  # killed between the two writes: bring the readable copy up to date
                write_json(self.run_dir / META, meta)
        elif saved_step != meta["step"]:  # an older checkpoint without it: a torn save is fatal
            raise BundleError(
                f"{self.run_dir}: checkpoint files disagree (interrupted while saving?); "
                "delete checkpoint.* to start over"
            )
        if meta["config"] != self.config:
            changed = sorted(k for k in self.config if meta["config"].get(k) != self.config.get(k))
            raise ConfigError(
                f"--resume with different settings ({', '.join(changed)}) than the "
                f"checkpoint in {self.run_dir}; rerun the same command"
            )
        from ..heads import upgrade_head_keys

        tensors = load_file(str(self.run_dir / TENSORS))
        weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(upgrade_head_keys(weights))  # a checkpoint of before the named head
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        if scaler is not None and scaler.is_enabled() and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        return LoopState(meta["epoch"], meta["step"], meta["history"])
