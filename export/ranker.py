"""The two-tower ranker of issue 12: item embeddings once per catalog item, a cheap user side and head per request.

Why it exists: the cross-encoder runs BERT once per (customer, candidate)
pair (~5 ms of CPU each). Here BERT runs once per catalog *item*, offline
(`ItemTower.embed_items`); a request then costs one pooling over the
customer's history embeddings plus a small MLP over the candidate rows, as
SEED §4.2 writes it: `Z = MLP(u·W_u + i·W_i)`, `Y = σ(MLP(z))`, with two
heads (purchase and quantity).

- `ItemTower`: the first L layers of the pretrained all-MiniLM-L6-v2, mean of
  the token states over `[CLS] item text [SEP]` (the pooling the sentence
  model was trained with) -> a float32 item embedding of `hidden_size` (384).
  Item text is tokenized by `Featurizer.encode_texts` (the one text encoding,
  cut to `max_item_tokens`), so a free-text item at serving time gets the
  same ids as in the catalog.
- `TwoTowerRanker`: the user side and the head. The item tower is *frozen*
  (its catalog embeddings are precomputed once): 2 CPU cores cannot afford
  BERT passes inside a training step, and a frozen tower lets the export ship
  the catalog matrix as it was trained on.

User vector (`pooling`, a setting):
- "weighted" (default): a softmax over the customer's distinct past items of
  `a * log1p(count) - b * days_ago / DAYS_CAP`, with a and b learned scalars
  (start a = 1, b = 2): habitual and recent items weigh most, and the model
  learns how much. Candidate-independent, so one pooling per request.
- "attention": the same prior plus a target attention term
  `(i W_q) · (h W_k) / sqrt(d)` per candidate (DIN-style): the user vector
  depends on the candidate; N x H scores per request.

The head reads, per candidate, `[u W_u, i W_i, (u W_u) ⊙ (i W_i), sim, φ']`:
- u W_u, i W_i: the projected user and item vectors (`proj_dim`);
- sim (when `similarity_features`): the cosine between the candidate's
  embedding and its most similar past item, and with the (unprojected)
  pooled user vector: text closeness to what the customer buys, which is
  what TF-IDF exploits on new-to-customer items;
- φ': the behavioural features (`edgerec.core.behaviour`), standardised with
  the training mean and standard deviation held in buffers.
It outputs `purchase_logit` (σ of it: probability of buying the candidate in
this basket) and `log_quantity` (natural log of the units bought if bought).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgerec.core.behaviour import DAYS_CAP, NUM_FEATURES
from edgerec.core.ranker_inputs import encode_item_texts, history_arrays  # noqa: F401  (history_arrays: re-exported for training)
from edgerec.core.featurize import Featurizer, FeaturizerConfig

POOLINGS = ("weighted", "attention")
SIMILARITY_FEATURES = 2  # max cosine to a past item, cosine to the pooled user vector


# -- the item tower ---------------------------------------------------------------------------------------


class ItemTower(nn.Module):
    """BERT encoder (first L layers) mean-pooled over an item text's tokens -> one embedding per item."""

    def __init__(self, encoder: nn.Module, featurizer: Featurizer) -> None:
        super().__init__()
        self.encoder = encoder
        self.featurizer = featurizer

    @property
    def dim(self) -> int:
        """Width of an item embedding (384 for MiniLM)."""
        return int(self.encoder.config.hidden_size)

    @classmethod
    def pretrained(cls, num_layers: int = 2, featurizer_config: FeaturizerConfig = FeaturizerConfig()) -> ItemTower:
        """The packaged all-MiniLM-L6-v2 cut to its first `num_layers` layers (1..6); nothing is downloaded."""
        import transformers
        from transformers import BertConfig, BertModel

        from edgerec.export.model import pretrained_path

        path = pretrained_path()
        config = BertConfig.from_pretrained(str(path))
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise ValueError(f"num_layers must be in 1..{config.num_hidden_layers}, got {num_layers}")
        config.num_hidden_layers = num_layers
        transformers.logging.set_verbosity_error()  # the dropped upper layers are unused on purpose
        encoder = BertModel.from_pretrained(str(path), config=config, add_pooling_layer=False, attn_implementation="eager")
        return cls(encoder.eval(), Featurizer.from_files(path / "tokenizer.json", featurizer_config))

    @classmethod
    def tiny(cls, seed: int = 0, layers: int = 2, hidden: int = 32) -> ItemTower:
        """A tiny random BERT (tests) with the real tokenizer."""
        from transformers import BertModel

        from edgerec.export.model import pretrained_path, tiny_config

        torch.manual_seed(seed)
        config = tiny_config(layers=layers, hidden=hidden)
        config._attn_implementation = "eager"  # as `pretrained`: a graph ONNX Runtime's optimizer fuses
        encoder = BertModel(config, add_pooling_layer=False)
        return cls(encoder.eval(), Featurizer.from_files(pretrained_path() / "tokenizer.json", FeaturizerConfig()))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """int64 [n, T] ids and 0/1 mask -> float32 [n, dim]: the mean of the unmasked token states."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_item_texts` with this tower's featurizer."""
        return encode_item_texts(self.featurizer, texts)

    @torch.inference_mode()
    def embed_items(self, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """float32 [len(texts), dim]: the embedding of each item text, in batches of texts sorted by length."""
        self.eval()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="item embeddings", unit="batch", disable=not progress, leave=False):
            index = order[start : start + batch_size]
            ids, mask = self.encode([texts[i] for i in index])
            out[index] = self(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        return out


# -- the history as tensors (one code path for training and serving) -------------------------------------------


def pad_histories(histories: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """`history_arrays` of B customers padded to the longest: rows int64 [B, H] (0 where padded), counts and
    days float32 [B, H], mask bool [B, H] (True: a real entry). H is at least 1, so an empty history is one
    masked slot."""
    width = max([1, *(len(h[0]) for h in histories)])
    rows = np.zeros((len(histories), width), np.int64)
    counts = np.zeros((len(histories), width), np.float32)
    days = np.full((len(histories), width), DAYS_CAP, np.float32)
    mask = np.zeros((len(histories), width), bool)
    for i, (r, c, d) in enumerate(histories):
        rows[i, : len(r)], counts[i, : len(r)], days[i, : len(r)], mask[i, : len(r)] = r, c, d, True
    return {k: torch.from_numpy(v) for k, v in (("rows", rows), ("counts", counts), ("days", days), ("mask", mask))}


# -- the user side and the head --------------------------------------------------------------------------


class TwoTowerRanker(nn.Module):
    """User pooling, projections W_u and W_i, and the two-headed MLP over candidate rows.

    Shapes: B customers, H history slots, N candidates, D item embedding width,
    F = NUM_FEATURES behavioural features. Every tensor is float32 except the
    bool masks.
    """

    def __init__(
        self,
        item_dim: int = 384,
        proj_dim: int = 64,
        hidden: int = 128,
        num_features: int = NUM_FEATURES,
        dropout: float = 0.1,
        pooling: str = "weighted",
        similarity_features: bool = True,
        wide: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.similarity_features = similarity_features
        self.hparams = {
            "item_dim": item_dim,
            "proj_dim": proj_dim,
            "hidden": hidden,
            "num_features": num_features,
            "dropout": dropout,
            "pooling": pooling,
            "similarity_features": similarity_features,
            "wide": wide,
        }
        self.count_weight = nn.Parameter(torch.tensor(1.0))  # a: weight of log1p(count) in the pooling
        self.recency_weight = nn.Parameter(torch.tensor(2.0))  # b: weight of days_ago / DAYS_CAP
        self.user_projection = nn.Linear(item_dim, proj_dim)  # W_u
        self.item_projection = nn.Linear(item_dim, proj_dim)  # W_i
        if pooling == "attention":
            self.query = nn.Linear(item_dim, proj_dim, bias=False)
            self.key = nn.Linear(item_dim, proj_dim, bias=False)
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))
        width = 3 * proj_dim + (SIMILARITY_FEATURES if similarity_features else 0) + num_features
        self.body = nn.Sequential(
            nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden // 2), nn.ReLU()
        )
        self.purchase_head = nn.Linear(hidden // 2, 1)
        # wide part: a linear term of [sim, φ'] added to the purchase logit, so repeat count, recency and
        # co-occurrence reach the logit directly as well as through the MLP (wide & deep)
        # (a product and sum, not a one-column matrix product, for ONNX Runtime's batch independence: see forward)
        self.wide_weight = nn.Parameter(torch.zeros(width - 3 * proj_dim)) if wide else None
        self.quantity_head = nn.Linear(hidden // 2, 1)

    def set_feature_scale(self, features: np.ndarray) -> None:
        """Standardise φ with these rows' mean and std (float32 [n, F], training features)."""
        features = np.asarray(features, dtype=np.float64)
        self.feature_mean.copy_(torch.from_numpy(features.mean(axis=0)).float())
        self.feature_std.copy_(torch.from_numpy(np.maximum(features.std(axis=0), 1e-3)).float())

    def prior(self, counts: torch.Tensor, days: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, H] pooling logits `a log1p(count) - b days / DAYS_CAP`, -inf at padding."""
        logits = self.count_weight * torch.log1p(counts) - self.recency_weight * (days / DAYS_CAP)
        return logits.masked_fill(~mask, float("-inf"))

    def forward(
        self,
        history: torch.Tensor,
        counts: torch.Tensor,
        days: torch.Tensor,
        mask: torch.Tensor,
        items: torch.Tensor,
        features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores N candidates for each of B customers.

        history [B, H, D] (past items' embeddings, newest first), counts [B, H]
        (earlier baskets that held each, >= 1), days [B, H] (days since last
        bought, DAYS_CAP if unknown), mask bool [B, H]; items [B, N, D]
        (candidates' embeddings); features [B, N, F] (`behaviour_features`,
        raw). Returns (purchase_logit [B, N], log_quantity [B, N]: log units).
        A customer with an empty history (mask all False) gets u = 0.
        """
        prior = self.prior(counts, days, mask)  # [B, H]
        any_history = mask.any(dim=1, keepdim=True)  # [B, 1]
        safe_prior = torch.where(any_history, prior, torch.zeros_like(prior))
        weights = torch.softmax(safe_prior, dim=1) * mask  # [B, H]; all 0 for an empty history
        pooled = torch.einsum("bh,bhd->bd", weights, history)  # [B, D]: the unprojected user vector u
        item_z = self.item_projection(items)  # [B, N, P]
        if self.pooling == "attention":
            keys = self.key(history)  # [B, H, P]
            queries = self.query(items)  # [B, N, P]
            scores = torch.einsum("bnp,bhp->bnh", queries, keys) / math.sqrt(keys.shape[-1]) + safe_prior.unsqueeze(1)
            scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
            scores = torch.where(any_history.unsqueeze(1), scores, torch.zeros_like(scores))
            attention = torch.softmax(scores, dim=2) * mask.unsqueeze(1)  # [B, N, H]
            projected = history @ self.user_projection.weight.T  # [B, H, P], bias added once below
            user_z = torch.einsum("bnh,bhp->bnp", attention, projected) + self.user_projection.bias  # [B, N, P]
        else:
            user_z = self.user_projection(pooled).unsqueeze(1)  # [B, 1, P]: one user vector for every candidate
        rest = []  # the head's inputs after the three projected parts: [sim, φ']
        if self.similarity_features:
            # cos(item, h) = (item · h/|h|) / |item|: one product of the raw items with the unit past items and
            # the unit user vector, divided by the items' norms, instead of normalising every item (the
            # [N, D] divide was the graph's costliest elementwise node). Every product has >= 2 rows and
            # columns (`ranker_onnx.RankerGraph` appends a zero candidate and a masked history slot), so
            # ONNX Runtime rounds a candidate's values alike whatever else is in the call.
            references = torch.cat(
                [nn.functional.normalize(history, dim=-1), nn.functional.normalize(pooled, dim=-1).unsqueeze(1)], dim=1
            )  # [B, H + 1, D]
            norms = torch.sqrt((items * items).sum(dim=-1, keepdim=True)).clamp(min=1e-12)  # [B, N, 1]
            cosine = (items @ references.transpose(1, 2)) / norms  # [B, N, H + 1]
            to_history = cosine[..., :-1].masked_fill(~mask.unsqueeze(1), -1.0)
            nearest = to_history.max(dim=2).values.masked_fill(~any_history, 0.0)  # [B, N]
            rest += [nearest.unsqueeze(-1), cosine[..., -1:]]
        rest.append((features - self.feature_mean) / self.feature_std)
        rest = torch.cat(rest, dim=-1)  # [B, N, width - 3P]
        # The body's first layer over [u W_u, i W_i, (u W_u) ⊙ (i W_i), rest], as one product per part with
        # its columns of the weight: the same sum without broadcasting u W_u to every candidate and
        # concatenating N rows of width 3P + ... first.
        first, width = self.body[0], user_z.shape[-1]
        user_part, item_part, both_part, rest_part = first.weight.split([width, width, width, rest.shape[-1]], dim=1)
        hidden = (
            user_z @ user_part.T + item_z @ item_part.T + (user_z * item_z) @ both_part.T + rest @ rest_part.T + first.bias
        )
        for layer in self.body[1:]:
            hidden = layer(hidden)
        logit = self.purchase_head(hidden).squeeze(-1)
        if self.wide_weight is not None:
            logit = logit + (rest * self.wide_weight).sum(dim=-1)
        return logit, self.quantity_head(hidden).squeeze(-1)

    def score(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` as served: (purchase probability in [0, 1], expected units if bought, > 0), each [B, N]."""
        logit, log_quantity = self(*inputs)
        return torch.sigmoid(logit), torch.exp(log_quantity)


def save_ranker(path: Path, model: TwoTowerRanker, info: dict | None = None) -> Path:
    """Write the head's weights (`ranker.safetensors`) and its settings (`ranker.json`) into `path`."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path / "ranker.safetensors"))
    (path / "ranker.json").write_text(json.dumps({"hparams": model.hparams, **(info or {})}, indent=1, default=str))
    return path


def load_ranker(path: Path) -> TwoTowerRanker:
    """Read a ranker written by `save_ranker` (eval mode)."""
    import json

    from safetensors.torch import load_file

    path = Path(path)
    model = TwoTowerRanker(**json.loads((path / "ranker.json").read_text())["hparams"])
    model.load_state_dict(load_file(str(path / "ranker.safetensors")))
    return model.eval()
