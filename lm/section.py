"""How a section of the run config is written: a frozen dataclass whose fields are its keys, each with its type,
default and meaning (`key`), and whose checks raise one line naming the key and the fix (`require`)."""

import dataclasses
from typing import Any, TypeVar

from lm.errors import UserError

T = TypeVar("T")


def key(default: Any, meaning: str) -> Any:
    """A config key: its default and what it means (`lm.train --print_config` shows both)."""
    return dataclasses.field(default=default, metadata={"meaning": meaning})


def meaning(field: dataclasses.Field) -> str:
    return field.metadata.get("meaning", "")


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def positive(section: Any, name: str, *keys: str) -> None:
    """One line for the first of `keys` of `section` (called `config.NAME`) that is not above 0."""
    for k in keys:
        value = getattr(section, k)
        require(value > 0, f"config.{name}.{k} must be positive, got {value!r}")


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """A section from its keys' values; keys it does not have are ignored and keys missing take their defaults,
    which is how a config saved by an older lm (or one with keys since removed) reads."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})
