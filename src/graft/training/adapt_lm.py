"""ULMFiT's middle stage for text: continue the encoder's masked-language-model training on the
task's own texts before the classifier is trained (`--adapt-lm N`). It is the one loop
(training/loop.py) with another loss.

The pretrained word embeddings are tied to the MLM decoder, as in BERT. Logits are computed only at
the masked positions where the model has a plain MLM head module (BERT's `cls`, RoBERTa's
`lm_head`), which halves the cost of a step for a small encoder with a 30k vocabulary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone
from ..backbones._text import require_transformers
from ..errors import ConfigError
from ..modalities.text_batches import bucketed_order, pad, tokenize
from ..runtime.device import module_device
from .callbacks import ProgressBar
from .loop import LoopConfig, fit
from .strategies import Stage

MASK_PROBABILITY = 0.15  # BERT's: 15% of tokens, of which 80% [MASK], 10% random, 10% unchanged
ENCODER_LR = 5e-5
HEAD_LR = 1e-3  # the MLM transform layer is new when the checkpoint has none (sentence encoders)
ENCODER, MLM_HEAD = "encoder", "mlm_head"


def mask_tokens(
    ids: torch.Tensor, tokenizer: Any, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (inputs, labels) with labels -100 where nothing is predicted."""
    special = torch.isin(ids, torch.tensor(sorted(set(tokenizer.all_special_ids))))
    chosen = (torch.rand(ids.shape, generator=generator) < MASK_PROBABILITY) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    draw = torch.rand(ids.shape, generator=generator)
    inputs = torch.where(chosen & (draw < 0.8), tokenizer.mask_token_id, ids)
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    return torch.where(swap, torch.randint(len(tokenizer), ids.shape, generator=generator), inputs), labels


def masked_targets(labels: torch.Tensor) -> torch.Tensor | None:
    """The masked positions of a batch as (position in the flattened batch, token id) rows, found
    on the CPU where the batch is made (None when nothing is masked): the loss then picks them on
    the device by index, where a boolean mask would make the host wait to learn how many."""
    flat = labels.numpy().ravel()
    positions = np.flatnonzero(flat != -100)
    if not positions.size:
        return None
    return torch.from_numpy(np.stack([positions, flat[positions]], axis=1))


def _mlm_model(backbone: Backbone) -> nn.Module:
    transformers = require_transformers()
    config = dict(backbone.model_config or {})
    hf_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    mlm = transformers.AutoModelForMaskedLM.from_config(hf_config)
    setattr(mlm, mlm.base_model_prefix, backbone.body.encoder)  # train graft's encoder in place
    mlm.tie_weights()
    return mlm.to(module_device(backbone.body.encoder))


def _head_of(mlm: nn.Module) -> nn.Module | None:
    return getattr(mlm, "cls", None) or getattr(mlm, "lm_head", None)


def _masked_lm_loss(
    head: nn.Module | None, pad_id: int
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(mlm: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`targets`: `masked_targets` rows, on the device."""
        mask = (inputs != pad_id).long()
        positions, wanted = targets[:, 0], targets[:, 1]
        if head is None:
            labels = torch.full_like(inputs, -100).view(-1).index_put((positions,), wanted)
            return mlm(input_ids=inputs, attention_mask=mask, labels=labels.view_as(inputs)).loss
        hidden = getattr(mlm, mlm.base_model_prefix)(input_ids=inputs, attention_mask=mask).last_hidden_state
        picked = hidden.flatten(0, 1).index_select(0, positions)
        return nn.functional.cross_entropy(head(picked).float(), wanted)

    return loss


def adapt_language_model(
    backbone: Backbone,
    texts: Sequence[str],
    epochs: int,
    max_length: int,
    seed: int = 0,
    batch_size: int = 32,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Masked-LM epochs on `texts`; the backbone's encoder is updated in place."""
    from ..modalities import get_modality

    tokenizer = backbone.tokenizer
    if tokenizer is None or tokenizer.mask_token_id is None:
        raise ConfigError(f"--adapt-lm needs a masked-LM tokenizer; {backbone.name} has no mask token")
    started = time.perf_counter()
    pad_id = backbone.preprocessing.pad_id
    ids = [t for t in tokenize(tokenizer, texts, max_length, pairs=True) if len(t) > 2]
    mlm = _mlm_model(backbone)
    head = _head_of(mlm)
    encoder_params = list(backbone.body.encoder.parameters())
    known = {id(p) for p in encoder_params}
    groups = [(ENCODER, encoder_params), (MLM_HEAD, [p for p in mlm.parameters() if id(p) not in known])]
    lengths = [len(t) for t in ids]

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        for index in bucketed_order(lengths, batch_size, generator):
            inputs, labels = mask_tokens(pad([ids[i] for i in index], pad_id), tokenizer, generator)
            targets = masked_targets(labels)
            if targets is not None:  # the epoch's loss is a mean over masked tokens
                yield inputs, targets

    steps_per_epoch = math.ceil(len(ids) / batch_size)
    cfg = LoopConfig(epochs=epochs, lr=HEAD_LR, weight_decay=0.01, pct_start=0.1, seed=seed, bn_frozen=False)
    stage = Stage({ENCODER: ENCODER_LR / HEAD_LR, MLM_HEAD: 1.0})
    history = fit(
        mlm,
        groups,
        lambda epoch: stage,
        batches,
        steps_per_epoch,
        cfg,
        callbacks=[ProgressBar("adapt-lm", epochs * steps_per_epoch)],
        loss_fn=_masked_lm_loss(head, pad_id),
    )
    backbone.body.encoder.train(False)
    rows = [{"epoch": r["epoch"], "mlm_loss": r["train_loss"]} for r in history]
    seconds = time.perf_counter() - started
    log(
        f"adapt-lm: {epochs} masked-LM epoch(s) on {len(ids)} texts, loss "
        f"{' -> '.join(format(r['mlm_loss'], '.4f') for r in rows)} ({seconds:.1f}s)"
    )
    # features of an adapted encoder must not be confused with the pretrained one's in the cache
    fingerprint = get_modality("text").fingerprint(texts)[:12]
    backbone.weights = f"{backbone.weights}+mlm{epochs}:{fingerprint}"
    return {"epochs": epochs, "texts": len(ids), "seconds": seconds, "history": rows}
