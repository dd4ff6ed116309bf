from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_RANKER: _ClassVar[Stage]
    STAGE_CROSS_ENCODER: _ClassVar[Stage]

class PurchasedFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PURCHASED_ANY: _ClassVar[PurchasedFilter]
    PURCHASED_EXCLUDE: _ClassVar[PurchasedFilter]
    PURCHASED_ONLY: _ClassVar[PurchasedFilter]
STAGE_UNSPECIFIED: Stage
STAGE_RANKER: Stage
STAGE_CROSS_ENCODER: Stage
PURCHASED_ANY: PurchasedFilter
PURCHASED_EXCLUDE: PurchasedFilter
PURCHASED_ONLY: PurchasedFilter

class ContextItem(_message.Message):
    __slots__ = ("item_id", "text", "count", "days_ago")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DAYS_AGO_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    count: int
    days_ago: float
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., count: _Optional[int] = ..., days_ago: _Optional[float] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("context", "candidates", "rerank_top")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RERANK_TOP_FIELD_NUMBER: _ClassVar[int]
    context: _containers.RepeatedCompositeFieldContainer[ContextItem]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    rerank_top: int
    def __init__(self, context: _Optional[_Iterable[_Union[ContextItem, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., rerank_top: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("purchase_probability", "expected_quantity", "model_name", "model_version", "stage")
    PURCHASE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    purchase_probability: _containers.RepeatedScalarFieldContainer[float]
    expected_quantity: _containers.RepeatedScalarFieldContainer[float]
    model_name: str
    model_version: str
    stage: _containers.RepeatedScalarFieldContainer[Stage]
    def __init__(self, purchase_probability: _Optional[_Iterable[float]] = ..., expected_quantity: _Optional[_Iterable[float]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., stage: _Optional[_Iterable[_Union[Stage, str]]] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("context", "candidates", "k", "rerank_top")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RERANK_TOP_FIELD_NUMBER: _ClassVar[int]
    context: _containers.RepeatedCompositeFieldContainer[ContextItem]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    k: int
    rerank_top: int
    def __init__(self, context: _Optional[_Iterable[_Union[ContextItem, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., k: _Optional[int] = ..., rerank_top: _Optional[int] = ...) -> None: ...

class RankedCandidate(_message.Message):
    __slots__ = ("index", "item_id", "purchase_probability", "expected_quantity", "stage")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    item_id: str
    purchase_probability: float
    expected_quantity: float
    stage: Stage
    def __init__(self, index: _Optional[int] = ..., item_id: _Optional[str] = ..., purchase_probability: _Optional[float] = ..., expected_quantity: _Optional[float] = ..., stage: _Optional[_Union[Stage, str]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("ranked", "model_name", "model_version")
    RANKED_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ranked: _containers.RepeatedCompositeFieldContainer[RankedCandidate]
    model_name: str
    model_version: str
    def __init__(self, ranked: _Optional[_Iterable[_Union[RankedCandidate, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("context", "k", "exclude_ids", "purchased", "rerank_top")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_IDS_FIELD_NUMBER: _ClassVar[int]
    PURCHASED_FIELD_NUMBER: _ClassVar[int]
    RERANK_TOP_FIELD_NUMBER: _ClassVar[int]
    context: _containers.RepeatedCompositeFieldContainer[ContextItem]
    k: int
    exclude_ids: _containers.RepeatedScalarFieldContainer[str]
    purchased: PurchasedFilter
    rerank_top: int
    def __init__(self, context: _Optional[_Iterable[_Union[ContextItem, _Mapping]]] = ..., k: _Optional[int] = ..., exclude_ids: _Optional[_Iterable[str]] = ..., purchased: _Optional[_Union[PurchasedFilter, str]] = ..., rerank_top: _Optional[int] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "text", "purchase_probability", "expected_quantity", "stage")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    purchase_probability: float
    expected_quantity: float
    stage: Stage
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., purchase_probability: _Optional[float] = ..., expected_quantity: _Optional[float] = ..., stage: _Optional[_Union[Stage, str]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_name", "model_version", "scored_items")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_name: str
    model_version: str
    scored_items: int
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., scored_items: _Optional[int] = ...) -> None: ...
