from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContextItem(_message.Message):
    __slots__ = ("item_id", "text", "count")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    count: int
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("context", "candidates")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    context: _containers.RepeatedCompositeFieldContainer[ContextItem]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, context: _Optional[_Iterable[_Union[ContextItem, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("purchase_probability", "expected_quantity", "model_name", "model_version")
    PURCHASE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    purchase_probability: _containers.RepeatedScalarFieldContainer[float]
    expected_quantity: _containers.RepeatedScalarFieldContainer[float]
    model_name: str
    model_version: str
    def __init__(self, purchase_probability: _Optional[_Iterable[float]] = ..., expected_quantity: _Optional[_Iterable[float]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("context", "candidates", "k")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    context: _containers.RepeatedCompositeFieldContainer[ContextItem]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    k: int
    def __init__(self, context: _Optional[_Iterable[_Union[ContextItem, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., k: _Optional[int] = ...) -> None: ...

class RankedCandidate(_message.Message):
    __slots__ = ("index", "item_id", "purchase_probability", "expected_quantity")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    index: int
    item_id: str
    purchase_probability: float
    expected_quantity: float
    def __init__(self, index: _Optional[int] = ..., item_id: _Optional[str] = ..., purchase_probability: _Optional[float] = ..., expected_quantity: _Optional[float] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("ranked", "model_name", "model_version")
    RANKED_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ranked: _containers.RepeatedCompositeFieldContainer[RankedCandidate]
    model_name: str
    model_version: str
    def __init__(self, ranked: _Optional[_Iterable[_Union[RankedCandidate, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...
