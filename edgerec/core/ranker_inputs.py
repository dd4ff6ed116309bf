"""The two-tower ranker's inputs for one customer, built once for training, the gate and serving.

`encode_item_texts` builds the item tower's input from item texts;
`history_arrays` turns a customer's history (`behaviour.HistoryEntry` rows,
newest first) into rows of the item-embedding matrix with their counts and
days since purchase; `ranker_feeds` turns those, the candidates' embedding
rows and their behavioural features (`behaviour.behaviour_features`) into
the feeds of the `RANKER` graph (`signatures.RANKER`: one customer, N
candidates). Training batches these arrays (`export.ranker.pad_histories`),
the export's gate and the server feed them to ONNX Runtime as they are, so
all three see the same numbers. NumPy only: the runtime imports this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from edgerec.core.behaviour import DAYS_CAP, clean_history
from edgerec.core.featurize import Featurizer
from edgerec.core.signatures import RANKER

History = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows int64 [h], counts float32 [h], days float32 [h]


def history_arrays(history: Iterable, index: Mapping[str, int], max_history: int) -> History:
    """A customer's history (`HistoryEntry` rows or `(key, count, days_ago)`, newest first) as arrays.

    Returns (rows int64 [h], counts float32 [h], days float32 [h]) for the at
    most `max_history` newest entries that `behaviour.clean_history` keeps
    (strictly in the past) and whose key has an embedding in `index` (row of
    the item embedding matrix); days_ago unknown -> DAYS_CAP, and days are
    capped at DAYS_CAP. An item without an embedding is skipped (a caller
    embeds free text with the item tower first and adds it to `index`).
    """
    rows, counts, days = [], [], []
    for entry in clean_history(history):
        row = index.get(entry.key, -1)
        if row < 0:
            continue
        rows.append(row)
        counts.append(entry.count)
        days.append(DAYS_CAP if entry.days_ago is None else min(entry.days_ago, DAYS_CAP))
        if len(rows) == max_history:
            break
    return np.asarray(rows, np.int64), np.asarray(counts, np.float32), np.asarray(days, np.float32)


def every_row(rows: np.ndarray, n: int) -> bool:
    """Whether `rows` (int [k]) is 0, 1, ..., n - 1: every row of an n-row table, in order."""
    return len(rows) == n and bool((np.asarray(rows) == np.arange(n)).all())


def ranker_feeds(
    embeddings: np.ndarray, history: History, candidate_rows: np.ndarray, features: np.ndarray
) -> dict[str, np.ndarray]:
    """The `RANKER` feeds for one customer, by input name, as training's collate builds one row of a batch.

    `embeddings` float32 [n_items, D]; `history` is `history_arrays` (rows, counts, days); an
    empty history becomes one masked slot. `candidate_rows` int64 [N] rows of `embeddings` (-1: no
    embedding, a zero vector); `features` float32 [N, F] raw `behaviour_features`.
    """
    rows, counts, days = history
    slots = max(1, len(rows))
    history_embeddings = np.zeros((slots, embeddings.shape[1]), np.float32)
    history_embeddings[: len(rows)] = embeddings[rows]
    history_counts = np.zeros(slots, np.float32)
    history_counts[: len(rows)] = counts
    history_days = np.full(slots, DAYS_CAP, np.float32)
    history_days[: len(rows)] = days
    history_mask = np.zeros(slots, np.int64)
    history_mask[: len(rows)] = 1
    candidate_rows = np.asarray(candidate_rows, np.int64)
    if every_row(candidate_rows, len(embeddings)):
        candidates = embeddings  # every row in order (a whole-catalog call): no copy
    elif (candidate_rows >= 0).all():
        candidates = embeddings[candidate_rows]
    else:
        candidates = embeddings[np.maximum(candidate_rows, 0)] * (candidate_rows >= 0)[:, None]
    values = (
        history_embeddings,
        history_counts,
        history_days,
        history_mask,
        np.ascontiguousarray(candidates, dtype=np.float32),
        np.ascontiguousarray(features, dtype=np.float32),
    )
    return dict(zip(RANKER.input_names, values))


def encode_item_texts(featurizer: Featurizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The item tower's input: `[CLS] text [SEP]` ids (int64 [n, T], right-padded with [PAD]) and attention
    mask (int64 [n, T]); one code path for PyTorch, the exported tower's catalog embeddings and serving."""
    f = featurizer
    rows = [(f.cls_id, *tokens, f.sep_id) for tokens in f.encode_texts(list(texts))]
    width = max((len(r) for r in rows), default=2)
    ids = np.full((len(rows), width), f.pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
