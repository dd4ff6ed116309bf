"""Typed settings: frozen dataclasses whose fields document their defaults.

Every stage keeps all of its defaults in one dataclass. The same class feeds
`--help` (each field becomes a flag whose help text is the field's `help`
metadata plus its default), so the documentation cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its documentation attached."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _scalar_type(annotation: Any) -> Any:
    """The argparse type for an annotation such as `int`, `Path | None` or `tuple[int, ...]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])
    if origin in (tuple, list):
        return _scalar_type(typing.get_args(annotation)[0])
    return annotation


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(annotation))
    return origin in (tuple, list)


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one `--flag` per field of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    for field in dataclasses.fields(cls):
        if field.metadata.get("cli") is False:
            continue
        annotation = hints[field.name]
        flag = "--" + (prefix + field.name).replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        help_text = f"{field.metadata.get('help', '')} (default: {default!r})".replace("%", "%%")
        dest = prefix + field.name
        base = _scalar_type(annotation)
        if base is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif _is_sequence(annotation):
            group.add_argument(flag, dest=dest, type=base, nargs="+", default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=base, default=None, help=help_text)


def from_arguments(cls: type[T], args: argparse.Namespace, prefix: str = "", base: T | None = None) -> T:
    """Build `cls` from parsed flags; flags left unset keep `base`'s (or the default) value."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, prefix + field.name, None)
        if value is None:
            continue
        if _is_sequence(hints[field.name]):
            value = tuple(value)
        values[field.name] = value
    start = base if base is not None else cls()
    return dataclasses.replace(start, **values)


def to_jsonable(obj: Any) -> Any:
    """A settings object as plain JSON values (paths become strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_jsonable(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a settings object saved with `to_jsonable`; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown setting(s) {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        annotation = hints[name]
        base = _scalar_type(annotation)
        if value is not None and _is_sequence(annotation):
            value = tuple(value)
        elif value is not None and base is Path:
            value = Path(value)
        values[name] = value
    return cls(**values)


def dump_json(path: Path, data: Any) -> None:
    """Write JSON with a stable layout (sorted keys, 2-space indent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n")
