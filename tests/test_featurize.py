"""The featurizer is the contract between training and serving: these pin its layout."""

import numpy as np
import pytest

from edgerec.export.model import pretrained_path
from edgerec.runtime.errors import EdgeRecError, ErrorCode
from edgerec.runtime.featurize import COUNT_TOKENS, ContextEntry, Featurizer, FeaturizerConfig

ITEMS = {
    "85123A": "WHITE HANGING HEART T-LIGHT HOLDER",
    "71053": "WHITE METAL LANTERN",
    "22423": "REGENCY CAKESTAND 3 TIER",
}


@pytest.fixture(scope="module")
def featurizer():
    plain = Featurizer.from_files(pretrained_path() / "tokenizer.json", FeaturizerConfig(max_length=48, max_item_tokens=8))
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
