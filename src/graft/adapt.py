"""ULMFiT's middle stage for text: continue the encoder's masked-language-model training on the
task's own texts before the classifier is trained (`--adapt-lm N`).

The pretrained word embeddings are tied to the MLM decoder, as in BERT. Logits are computed only at
the masked positions where the model has a plain MLM head module (BERT's `cls`, RoBERTa's
`lm_head`), which halves the cost of a step for a small encoder with a 30k vocabulary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .backbones import Backbone
from .backbones._text import require_transformers
from .features import fingerprint_sources
from .text import bucketed_order, pad, tokenize
from .train import autocast, one_cycle

MASK_PROBABILITY = 0.15  # BERT's: 15% of tokens, of which 80% [MASK], 10% random, 10% unchanged
ENCODER_LR = 5e-5
HEAD_LR = 1e-3  # the MLM transform layer is new when the checkpoint has none (sentence encoders)


def mask_tokens(
    ids: torch.Tensor, tokenizer: Any, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (inputs, labels) with labels -100 where nothing is predicted."""
    special = torch.isin(ids, torch.tensor(sorted(set(tokenizer.all_special_ids))))
    chosen = (torch.rand(ids.shape, generator=generator) < MASK_PROBABILITY) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    draw = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[swap] = torch.randint(len(tokenizer), ids.shape, generator=generator)[swap]
    return inputs, labels


def _mlm_model(backbone: Backbone) -> nn.Module:
    transformers = require_transformers()
    config = dict(backbone.model_config or {})
    hf_config = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    mlm = transformers.AutoModelForMaskedLM.from_config(hf_config)
    setattr(mlm, mlm.base_model_prefix, backbone.body.encoder)  # train graft's encoder in place
    mlm.tie_weights()
    return mlm


def _head_of(mlm: nn.Module) -> nn.Module | None:
    return getattr(mlm, "cls", None) or getattr(mlm, "lm_head", None)


def _loss(mlm: nn.Module, head: nn.Module | None, inputs: torch.Tensor, labels: torch.Tensor, pad_id: int):
    mask = (inputs != pad_id).long()
    if head is None:
        return mlm(input_ids=inputs, attention_mask=mask, labels=labels).loss
    hidden = getattr(mlm, mlm.base_model_prefix)(input_ids=inputs, attention_mask=mask).last_hidden_state
    picked = labels != -100
    return nn.functional.cross_entropy(head(hidden[picked]).float(), labels[picked])


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
    tokenizer = backbone.tokenizer
    if tokenizer.mask_token_id is None:
        raise ValueError(f"--adapt-lm needs a masked-LM tokenizer; {backbone.name} has no mask token")
    started = time.perf_counter()
    ids = [t for t in tokenize(tokenizer, texts, max_length) if len(t) > 2]
    mlm = _mlm_model(backbone).train()
    head = _head_of(mlm)
    encoder_params = {id(p) for p in backbone.body.encoder.parameters()}
    head_params = [p for p in mlm.parameters() if id(p) not in encoder_params]
    optimizer = torch.optim.AdamW(
        [
            {"params": list(backbone.body.encoder.parameters()), "lr": ENCODER_LR, "base": ENCODER_LR},
            {"params": head_params, "lr": HEAD_LR, "base": HEAD_LR},
        ],
        weight_decay=0.01,
    )
    lengths = [len(t) for t in ids]
    steps = epochs * math.ceil(len(ids) / batch_size)
    generator = torch.Generator().manual_seed(seed)
    history, step = [], 0
    for epoch in range(epochs):
        total, count = 0.0, 0
        for index in bucketed_order(lengths, batch_size, generator):
            inputs, labels = mask_tokens(
                pad([ids[i] for i in index], backbone.preprocessing.pad_id), tokenizer, generator
            )
            if not (labels != -100).any():
                continue
            for group in optimizer.param_groups:
                group["lr"] = group["base"] * one_cycle(step / steps, 0.1)
            with autocast(inputs.device):
                loss = _loss(mlm, head, inputs, labels, backbone.preprocessing.pad_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count, step = total + float(loss.detach()), count + 1, step + 1
        history.append({"epoch": epoch + 1, "mlm_loss": total / max(1, count)})
        log(f"adapt-lm epoch {epoch + 1}/{epochs}  masked-LM loss {total / max(1, count):.4f}")
    backbone.body.encoder.train(False)
    # features of an adapted encoder must not be confused with the pretrained one's in the cache
    backbone.weights = f"{backbone.weights}+mlm{epochs}:{fingerprint_sources(texts, texts=True)[:12]}"
    return {"epochs": epochs, "texts": len(ids), "seconds": time.perf_counter() - started, "history": history}
