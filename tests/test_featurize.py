"""The featurizer is the contract between training and serving: these pin its layout."""

from pathlib import Path

import numpy as np
import pytest

from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.featurize import COUNT_TOKENS, ContextEntry, Featurizer, FeaturizerConfig
from edgerec.runtime.pipeline import Candidate, ContextItem, featurize

# The real all-MiniLM-L6-v2 tokenizer, committed beside the tiny test model (no torch needed).
TOKENIZER = Path(__file__).parent / "data" / "tiny_model" / "tokenizer.json"

ITEMS = {
    "85123A": "WHITE HANGING HEART T-LIGHT HOLDER",
    "71053": "WHITE METAL LANTERN",
    "22423": "REGENCY CAKESTAND 3 TIER",
}


@pytest.fixture(scope="module")
def featurizer():
    plain = Featurizer.from_files(TOKENIZER, FeaturizerConfig(max_length=48, max_item_tokens=8))
    return Featurizer(plain.tokenizer, plain.config, dict(zip(ITEMS, plain.encode_texts(list(ITEMS.values())))))


def decode(featurizer, ids):
    return featurizer.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def test_pair_layout_newest_first_with_counts(featurizer):
    pairs = featurizer.catalog_pairs([("71053", 3), ("85123A", 1)], ["71053", "22423"])
    batch = featurizer.pack(pairs)
    first = decode(featurizer, batch.input_ids[0][batch.attention_mask[0] == 1])
    second = decode(featurizer, batch.input_ids[1][batch.attention_mask[1] == 1])
    assert first == "[CLS] 3x white metal lantern ; 1x white hanging heart t - light holder ; [SEP] 3x white metal lantern [SEP]"
    assert second.endswith("[SEP] 0x regency cakestand 3 tier [SEP]")  # never bought: count 0


def test_token_types_mark_the_candidate_and_padding_is_to_the_longest_pair(featurizer):
    short = ((), featurizer.candidate_tokens(featurizer.catalog["71053"], 0))
    long = (featurizer.context_tokens([ContextEntry(featurizer.catalog["85123A"], 2)]), short[1])
    batch = featurizer.pack([short, long])
    widths = batch.attention_mask.sum(axis=1)
    assert batch.input_ids.shape[1] == widths.max() == featurizer.pair_length(*long)
    assert widths[0] == featurizer.pair_length(*short)
    assert batch.input_ids[0, widths[0]:].tolist() == [featurizer.pad_id] * (batch.input_ids.shape[1] - widths[0])
    # token type 1 covers exactly the candidate and its closing [SEP]
    assert batch.token_type_ids[1].sum() == len(long[1]) + 1
    assert batch.real_tokens == int(widths.sum()) and batch.padded_tokens == batch.input_ids.size


def test_context_stops_at_its_budget_so_every_pair_fits(featurizer):
    history = [ContextEntry(featurizer.catalog[item], 5) for item in ITEMS] * 10
    context = featurizer.context_tokens(history)
    assert 0 < len(context) <= featurizer.config.context_budget
    longest = featurizer.candidate_tokens(tuple(range(1000, 1000 + featurizer.config.max_item_tokens)), 999)
    assert len(longest) <= featurizer.config.max_item_tokens + COUNT_TOKENS
    assert featurizer.pair_length(context, longest) <= featurizer.config.max_length


def test_free_text_is_tokenized_and_bad_items_are_refused_naming_the_field(featurizer):
    assert featurizer.item_tokens(text="White Metal Lantern") == featurizer.catalog["71053"]
    assert featurizer.item_tokens("71053") == featurizer.catalog["71053"]
    for kwargs, words in [
        ({"item_id": "NOPE"}, "unknown item id"),
        ({}, "neither an item id nor a text"),
        ({"text": "   "}, "blank"),
        ({"text": "x" * 10_000}, "characters"),
    ]:
        with pytest.raises(EdgeRecError) as caught:
            featurizer.item_tokens(field="candidates[3]", **kwargs)
        assert caught.value.code is ErrorCode.INVALID_ARGUMENT
        assert caught.value.message.startswith("candidates[3]: ") and words in caught.value.message


def test_pack_gives_int64_model_inputs(featurizer):
    batch = featurizer.pack(featurizer.catalog_pairs([], list(ITEMS)))
    feeds = batch.as_feeds()
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(array.dtype == np.int64 and array.shape == batch.input_ids.shape for array in feeds.values())


def test_serving_and_training_build_identical_token_rows(featurizer):
    """The server's featurization of a request (catalog ids, counts, free text) gives the very rows that
    training builds with `catalog_pairs` for the same history and candidates."""
    free = {"free:mug": "RED SPOTTY MUG", "free:lamp": "VINTAGE BRASS DESK LAMP", "free:new": "BRAND NEW ENAMEL TEA POT"}
    # Training knows every item by id; the server gets the same items as free text it has never seen.
    training = Featurizer(
        featurizer.tokenizer, featurizer.config, {**featurizer.catalog, **dict(zip(free, featurizer.encode_texts(list(free.values()))))}
    )
    history = [("71053", 3), ("85123A", 1), ("22423", 4), ("free:lamp", 1), ("free:mug", 2), ("71053", 5)]  # newest first
    candidates = ["free:mug", "71053", "22423", "free:new", "85123A", "free:lamp"]

    def as_request_item(item_id):
        return {"text": free[item_id]} if item_id in free else {"item_id": item_id}

    context = [ContextItem(count=count, **as_request_item(item)) for item, count in history]
    rows = featurize(featurizer, context, [Candidate(**as_request_item(item)) for item in candidates])
    serving = rows.feeds(np.arange(len(candidates)))
    expected = training.pack(training.catalog_pairs(history, candidates)).as_feeds()
    assert list(serving) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(serving[name], expected[name], err_msg=name)
    # The comparison covers what could differ: the mug did not fit in the context, yet keeps its count.
    assert "mug" not in decode(featurizer, rows.context)
    mug = serving["input_ids"][0][serving["token_type_ids"][0] == 1]
    assert decode(featurizer, mug).startswith("2x red spotty mug")
    new = serving["input_ids"][3][serving["token_type_ids"][3] == 1]
    assert decode(featurizer, new).startswith("0x brand new")
