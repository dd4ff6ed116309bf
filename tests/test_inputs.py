"""What the model can read, and the refusals for the rest (issue 11, items 2 and 3).

- KServe ModelInfer rows must follow the layout the cross-encoder was trained on,
  `[CLS] context [SEP] candidate [SEP]` then padding (`featurize.ROW_LAYOUT`); a row
  that breaks it (no candidate segment, a mask with holes, ...) is refused with
  INVALID_ARGUMENT naming the row and the rule, instead of getting a constant score.
- Free text is read as plain text (special-token strings are their characters) and
  must hold a token the model knows; context items and candidates alike.
A real gRPC server on 127.0.0.1 serves the tiny bundle (fp32: scores compare exactly).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer

from edgerec.core.featurize import ContextEntry, Featurizer, load_catalog
from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import grpc_service_pb2_grpc as kserve_grpc
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from server_helpers import catalog_ids, featurizer_of

TIMEOUT = 20


@pytest.fixture(scope="module")
def featurizer(tiny_bundle) -> Featurizer:
    return featurizer_of(tiny_bundle)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


# -- item 2: the row layout of ModelInfer ------------------------------------------------------------
def infer(channel, input_ids, attention_mask, token_type_ids) -> tuple[grpc.StatusCode, str]:
    request = kserve.ModelInferRequest(model_name="tiny")
    for name, values in (("input_ids", input_ids), ("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        values = np.asarray(values, dtype=np.int64)
        tensor = request.inputs.add(name=name, datatype="INT64", shape=list(values.shape))
        tensor.contents.int64_contents.extend(values.ravel().tolist())
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    return status_of(lambda: stub.ModelInfer(request, timeout=TIMEOUT))


def good_rows(featurizer: Featurizer, ids: list[str], rows: int = 4):
    """Rows packed by the featurizer (context of 0-2 catalog items, one catalog candidate each), as int64 copies."""
    pairs = [
        featurizer.build_pairs(
            [ContextEntry(featurizer.catalog[ids[(row + j) % len(ids)]], 1 + j) for j in range(row % 3)],
            [("", featurizer.catalog[ids[(3 * row + 1) % len(ids)]])],
        ).pairs()[0]
        for row in range(rows)
    ]
    batch = featurizer.pack(pairs)
    return batch.input_ids.copy(), batch.attention_mask.copy(), batch.token_type_ids.copy()


def _segments(types, mask, row):
    """(index of the context's [SEP], index of the last real token) of a packed row."""
    length = int(mask[row].sum())
    first_sep = int(np.flatnonzero(types[row, :length] == 1)[0]) - 1
    return first_sep, length - 1


def _hole_in_mask(f, ids, mask, types, row):
    mask[row, 1] = 0


def _no_cls(f, ids, mask, types, row):
    ids[row, 0] = ids[row, 1] if ids[row, 1] not in f.special_ids else 2417


def _types_not_0s_then_1s(f, ids, mask, types, row):
    types[row, 0] = 1


def _all_types_0(f, ids, mask, types, row):
    types[row] = 0


def _candidate_masked(f, ids, mask, types, row):
    first_sep, _ = _segments(types, mask, row)
    mask[row, first_sep + 1 :] = 0


def _context_without_sep(f, ids, mask, types, row):
    first_sep, _ = _segments(types, mask, row)
    types[row, first_sep] = 1  # the [SEP] moves into the candidate segment: the context ends without one


def _candidate_without_sep(f, ids, mask, types, row):
    _, last = _segments(types, mask, row)
    ids[row, last] = 2417


def _empty_candidate(f, ids, mask, types, row):
    first_sep, _ = _segments(types, mask, row)
    ids[row, first_sep + 1] = f.sep_id
    mask[row, first_sep + 2 :] = 0


def _sep_inside_context(f, ids, mask, types, row):
    ids[row, 1] = f.sep_id


def _mask_token_in_candidate(f, ids, mask, types, row):
    first_sep, _ = _segments(types, mask, row)
    ids[row, first_sep + 1] = f.tokenizer.token_to_id("[MASK]")


def _candidate_all_unk(f, ids, mask, types, row):
    first_sep, last = _segments(types, mask, row)
    ids[row, first_sep + 1 : last] = f.unk_id


BROKEN_ROWS = {
    "a hole in the mask": (_hole_in_mask, "attention_mask", "0 before a 1"),
    "no [CLS] first": (_no_cls, "input_ids", "does not start with [CLS]"),
    "token types not 0s then 1s": (_types_not_0s_then_1s, "token_type_ids", "not 0s then 1s"),
    "every token type 0": (_all_types_0, "token_type_ids", "no candidate segment"),
    "the candidate segment masked": (_candidate_masked, "token_type_ids", "no candidate segment"),
    "the context not ended by [SEP]": (_context_without_sep, "input_ids", "context segment (token type 0) with [SEP]"),
    "the candidate not ended by [SEP]": (_candidate_without_sep, "input_ids", "candidate segment (token type 1) with [SEP]"),
    "no candidate token": (_empty_candidate, "input_ids", "no candidate token before"),
    "[SEP] inside the context": (_sep_inside_context, "input_ids", "inside the context or the candidate"),
    "[MASK] inside the candidate": (_mask_token_in_candidate, "input_ids", "inside the context or the candidate"),
    "a candidate of [UNK] only": (_candidate_all_unk, "input_ids", "no candidate token the model knows"),
}


def test_rows_packed_by_the_featurizer_follow_the_layout_and_are_scored(featurizer, tiny_bundle, channel) -> None:
    ids = catalog_ids(tiny_bundle)
    rows = good_rows(featurizer, ids, rows=8)
    assert featurizer.layout_errors(*rows) is None
    assert infer(channel, *rows)[0] is grpc.StatusCode.OK
    # a new customer: empty context, `[CLS] [SEP] candidate [SEP]`
    pair = featurizer.build_pairs([], [("", featurizer.catalog[ids[0]])]).pairs()[0]
    batch = featurizer.pack([pair])
    assert infer(channel, batch.input_ids, batch.attention_mask, batch.token_type_ids)[0] is grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("input_ids", "attention_mask", "token_type_ids"),
    [
        ([[101, 2417, 5572, 102]], [[1, 1, 1, 1]], [[0, 0, 0, 0]]),  # the row: no segment-1 token
        ([[101, 2417, 102, 5572, 102]], [[1, 1, 1, 0, 0]], [[0, 0, 0, 1, 1]]),  # the only segment-1 tokens masked
    ],
    ids=["all token types 0", "segment 1 only under padding"],
)
def test_rows_without_a_candidate_segment_are_refused_not_given_a_constant_score(
    channel, input_ids, attention_mask, token_type_ids
) -> None:
    code, details = infer(channel, input_ids, attention_mask, token_type_ids)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("inputs.token_type_ids: row 0 has no candidate segment"), details
    assert "[CLS] context [SEP] candidate [SEP]" in details  # the refusal says what a row must be


@pytest.mark.parametrize("kind", sorted(BROKEN_ROWS))
def test_a_row_that_breaks_the_layout_is_refused_naming_the_row_and_the_rule(featurizer, tiny_bundle, channel, kind) -> None:
    break_row, field, rule = BROKEN_ROWS[kind]
    input_ids, attention_mask, token_type_ids = good_rows(featurizer, catalog_ids(tiny_bundle))
    break_row(featurizer, input_ids, attention_mask, token_type_ids, 2)
    assert featurizer.layout_errors(input_ids, attention_mask, token_type_ids)[:2] == (field, 2)
    code, details = infer(channel, input_ids, attention_mask, token_type_ids)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"inputs.{field}: row 2 ") and rule in details, details


def test_the_layout_check_is_vectorized_over_a_1024_row_batch(featurizer, tiny_bundle) -> None:
    """One bad row among 1024 is found, whichever it is (the check runs a few array passes, no per-row loop)."""
    input_ids, attention_mask, token_type_ids = (np.tile(a, (256, 1)) for a in good_rows(featurizer, catalog_ids(tiny_bundle)))
    assert input_ids.shape[0] == 1024 and featurizer.layout_errors(input_ids, attention_mask, token_type_ids) is None
    for row in (0, 517, 1023):
        broken = token_type_ids.copy()
        broken[row] = 0
        field, found, rule = featurizer.layout_errors(input_ids, attention_mask, broken)
        assert (field, found) == ("token_type_ids", row) and "no candidate segment" in rule


# -- item 3: free text ---------------------------------------------------------------------------------
def score(channel, candidates, context=()) -> tuple[grpc.StatusCode, str, list[float]]:
    request = recommender_pb2.ScoreRequest(
        candidates=[recommender_pb2.Candidate(text=text) for text in candidates],
        context=[recommender_pb2.ContextItem(text=text, count=1) for text in context],
    )
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    try:
        response = stub.Score(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), []
    return grpc.StatusCode.OK, "", list(response.purchase_probability)


UNREADABLE = {
    "emoji only": "😀😀😀",
    "512 emoji": "😀" * 512,
    "one 512-letter word": "A" * 512,
    "emoji words, then a word past the tokens the model is fed": "😀 " * 20 + "RED",
    "only marks that normalization removes": "\u0301\u0301",
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_free_text_without_a_token_the_model_knows_is_refused_naming_the_field(channel, kind) -> None:
    text = UNREADABLE[kind]
    code, details, _ = score(channel, ["RED ENAMEL TEAPOT", text])
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("candidates[1]: text has no tokens the model knows"), details
    code, details, _ = score(channel, ["RED ENAMEL TEAPOT"], context=["BLUE ENAMEL TEAPOT", text])
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("context[1]: text has no tokens the model knows"), details


def test_text_partly_unknown_to_the_model_is_scored_on_the_words_it_knows(featurizer, channel) -> None:
    tokens = featurizer.item_tokens(text="MUG ☕")
    assert featurizer.unk_id in tokens and any(t != featurizer.unk_id for t in tokens)
    code, details, probabilities = score(channel, ["MUG ☕"])
    assert code is grpc.StatusCode.OK and len(probabilities) == 1, details


def special_strings(featurizer: Featurizer) -> list[str]:
    return sorted(token.content for token in featurizer.tokenizer.get_added_tokens_decoder().values())


def test_special_token_strings_in_text_are_read_as_their_characters(featurizer, channel) -> None:
    """`RED [SEP] TEAPOT` scores as `RED [ SEP ] TEAPOT`: the text holds no separator, only brackets and letters."""
    specials = special_strings(featurizer)
    assert {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"} <= set(specials)
    texts = [f"RED {token} TEAPOT" for token in specials]
    spelled = [f"RED {token[0]} {token[1:-1]} {token[-1]} TEAPOT" for token in specials]
    for text in texts:
        assert not set(featurizer.item_tokens(text=text)) & featurizer.special_ids, text
    code, details, as_typed = score(channel, texts)
    assert code is grpc.StatusCode.OK, details
    assert score(channel, spelled)[2] == as_typed
    code, details, in_context = score(channel, ["RED ENAMEL TEAPOT"], context=["BLUE [SEP] MUG [CLS]"])
    assert code is grpc.StatusCode.OK and in_context == score(channel, ["RED ENAMEL TEAPOT"], context=["BLUE [ SEP ] MUG [ CLS ]"])[2]


def test_added_tokens_of_the_tokenizer_never_come_out_of_free_text(featurizer) -> None:
    """Tokens added to the tokenizer (special or not) are matched in raw text by `Tokenizer.encode`; plain text is not."""
    tokenizer = Tokenizer.from_str(featurizer.tokenizer.to_str())
    tokenizer.add_special_tokens([AddedToken("<extra>", special=True)])
    tokenizer.add_tokens([AddedToken("zzword", special=False)])
    added = {tokenizer.token_to_id("<extra>"), tokenizer.token_to_id("zzword")}
    extended = Featurizer(tokenizer, featurizer.config)
    text = "RED <extra> zzword TEAPOT [SEP]"
    assert added <= set(tokenizer.encode(text, add_special_tokens=False).ids)  # what reading it as tokens would do
    tokens = extended.item_tokens(text=text)
    assert not set(tokens) & (added | extended.special_ids)
    assert max(tokens) < featurizer.tokenizer.get_vocab_size()


def test_the_catalog_is_encoded_as_free_text_is_so_training_and_serving_agree(featurizer, tiny_bundle) -> None:
    """The bundle's pre-tokenized catalog (written by `save_catalog` at export) is what `encode_texts` gives now,
    and what the tokenizer's own encoding gives for texts without special-token strings (the shop's never have one)."""
    catalog = load_catalog(tiny_bundle / "catalog.json")
    texts = [entry["text"] for entry in catalog.values()]
    encoded = featurizer.encode_texts(texts)
    assert [list(t) for t in encoded] == [entry["token_ids"] for entry in catalog.values()]
    limit = featurizer.config.max_item_tokens
    assert encoded == [tuple(e.ids[:limit]) for e in featurizer.tokenizer.encode_batch(texts, add_special_tokens=False)]
