"""Texts as token ids and padded batches, for training, extraction and prediction alike: tokenising
(one text; a sentence pair cross-encoded as the tokenizer's pair, or side by side for a bi-encoder),
the length from the data, padding, and length-bucketed batches.

Texts are tokenised once into unpadded id tensors. Each training batch holds texts of similar
length (sorted inside shuffled chunks, as Hugging Face's `group_by_length` and fairseq do) and is
padded only to its own longest text, so little compute is spent on padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones import TextPreprocessing
from ..errors import DataError
from ..runtime.device import to_device

BUCKET_BATCHES = 50  # batches per sorted chunk: similar lengths inside a batch, random order outside
LENGTH_PERCENTILE = 99  # --max-length from the data: the 99th percentile of token counts
PAD_MULTIPLE_CUDA = 8  # padded lengths on a CUDA GPU (see `pad`)


def tokenize(
    tokenizer: Any, texts: Sequence[Any], max_length: int, pairs: bool = False, bi: bool = False
) -> list[torch.Tensor]:
    """Token ids per text, truncated to `max_length`. With `pairs`, a sentence pair (a 2-tuple) is
    encoded as the tokenizer's pair, [CLS] a [SEP] b [SEP], truncated longest first so that both
    sides keep a share; without (bundles from before pairs), its texts are joined by a newline.
    With `bi` (a bi-encoder), each side is encoded alone, truncated to `max_length`, and a pair's
    ids are an (L, 2) tensor: the two sides as columns, the shorter padded (`_side_by_side`)."""
    split = [pair_of(t) for t in texts]
    if bi:
        return _side_by_side(tokenizer, split, max_length)
    if not pairs:
        split = [("\n".join(t for t in (a, b) if t) if b is not None else a, None) for a, b in split]
    ids: list[list[int]] = [[] for _ in split]
    single = [i for i, (_, b) in enumerate(split) if b is None]
    double = [i for i, (_, b) in enumerate(split) if b is not None]
    if single:
        encoded = tokenizer([split[i][0] for i in single], truncation=True, max_length=max_length)
        for i, row in zip(single, encoded["input_ids"], strict=True):
            ids[i] = row
    if double:
        firsts, seconds = [split[i][0] for i in double], [str(split[i][1]) for i in double]
        encoded = tokenizer(firsts, seconds, truncation="longest_first", max_length=max_length)
        for i, row in zip(double, encoded["input_ids"], strict=True):
            ids[i] = row
    return [torch.tensor(row, dtype=torch.long) for row in ids]


def _side_by_side(
    tokenizer: Any, split: Sequence[tuple[str, str | None]], max_length: int
) -> list[torch.Tensor]:
    """Each pair's two texts tokenised alone, as the (L, 2) columns of one tensor; a single text
    (a pairs model given one) is the first side, the second all padding."""
    firsts = tokenizer([a for a, _ in split], truncation=True, max_length=max_length)["input_ids"]
    given = [i for i, (_, b) in enumerate(split) if b is not None]
    seconds: list[list[int]] = [[] for _ in split]
    if given:
        encoded = tokenizer([str(split[i][1]) for i in given], truncation=True, max_length=max_length)
        for i, row in zip(given, encoded["input_ids"], strict=True):
            seconds[i] = row
    pad_id = int(tokenizer.pad_token_id)
    out = []
    for a, b in zip(firsts, seconds, strict=True):
        pair = torch.full((max(len(a), len(b), 1), 2), pad_id, dtype=torch.long)
        pair[: len(a), 0] = torch.tensor(a, dtype=torch.long)
        pair[: len(b), 1] = torch.tensor(b, dtype=torch.long)
        out.append(pair)
    return out


def pair_of(text: Any) -> tuple[str, str | None]:
    """(first, second) of a sentence pair (a 2-tuple, 2-list or 2-array of texts: a DataFrame row
    of two text columns); (text, None) for one text."""
    several = isinstance(text, tuple | list | np.ndarray)
    if several and len(text) == 2 and all(isinstance(t, str) for t in text):
        return str(text[0]), str(text[1])
    if isinstance(text, np.ndarray):
        raise DataError(f"a text model takes texts or (first, second) pairs, not an array {text.shape}")
    return str(text), None


def is_pair(text: Any) -> bool:
    return pair_of(text)[1] is not None


def length_from_data(tokenizer: Any, texts: Sequence[Any], prep: TextPreprocessing) -> TextPreprocessing:
    """The maximum sequence length: a high percentile of the training texts' token counts (so a
    few very long texts do not set the cost of every batch), rounded up to 8, capped by the model."""
    sample = list(texts[:20000])
    lengths = [len(ids) for ids in token_ids(tokenizer, sample, prep.with_length(prep.model_max_length))]
    wanted = int(np.percentile(lengths, LENGTH_PERCENTILE)) if lengths else prep.max_length
    return prep.with_length(max(8, math.ceil(wanted / 8) * 8))


def token_ids(tokenizer: Any, texts: Sequence[Any], prep: TextPreprocessing) -> list[torch.Tensor]:
    """`tokenize` as `prep` says: its length, and how it encodes pairs."""
    return tokenize(tokenizer, texts, prep.max_length, prep.pairs, prep.bi)


def pad(ids: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    return nn.utils.rnn.pad_sequence(list(ids), batch_first=True, padding_value=pad_id)


def side_by_side_rows(batch: torch.Tensor) -> torch.Tensor:
    """Padded bi-encoder pairs (N, L, 2) as the rows the encoder takes (N, 2L): the first texts'
    L ids, then the second texts' (`TextEncoder.forward` splits them again)."""
    return batch.transpose(1, 2).reshape(batch.shape[0], -1)


@dataclass(frozen=True)
class Padding:
    """Batches of token ids padded to their longest. For a CUDA GPU the length is rounded up to a
    multiple of PAD_MULTIPLE_CUDA (Hugging Face's `pad_to_multiple_of=8`), never beyond `limit`
    (the truncation length): tensor cores take multiples of 8, and bucketed batches then come in
    8x fewer distinct shapes, each of which costs kernel selection and allocator work the first
    time the GPU sees it. A CPU pays for every padded token, so there batches keep their length."""

    pad_id: int
    limit: int

    def __call__(self, ids: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
        batch = pad(ids, self.pad_id)
        length = batch.shape[1]
        rounded = -(-length // PAD_MULTIPLE_CUDA) * PAD_MULTIPLE_CUDA
        if device.type == "cuda" and length < rounded <= self.limit:
            grow = (0, 0, 0, rounded - length) if batch.dim() == 3 else (0, rounded - length)
            batch = nn.functional.pad(batch, grow, value=self.pad_id)
        return side_by_side_rows(batch) if batch.dim() == 3 else batch


def bucketed_order(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Batches of indices: shuffle, sort chunks of BUCKET_BATCHES batches by length, shuffle batches."""
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    chunk_size = batch_size * BUCKET_BATCHES
    for start in range(0, len(perm), chunk_size):
        chunk = sorted(perm[start : start + chunk_size], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def sorted_batches(
    ids: Sequence[torch.Tensor], padding: Padding, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(positions, padded ids) for inference: length-sorted batches, least padding."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield torch.tensor(index), to_device(padding([ids[i] for i in index], device), device)
