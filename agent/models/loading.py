"""Load YAML/JSON documents into models, turning every failure into a ProfileError."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from agent.errors import ProfileError, Violation

M = TypeVar("M", bound=BaseModel)

MAX_DOCUMENT_BYTES = 4 << 20


def format_loc(loc: tuple[int | str, ...]) -> str:
    """``("partitions", 2, "budget", "quota_us")`` -> ``partitions[2].budget.quota_us``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def violations_from(err: ValidationError) -> list[Violation]:
    found = []
    for e in err.errors(include_url=False):
        # Union members and validator wrappers add loc parts a person never wrote.
        loc = tuple(p for p in e["loc"] if p not in ("function-after", "str", "int"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        found.append(Violation(format_loc(loc), msg))
    return found


def parse_text(text: str | bytes, source: str) -> Any:
    """Parse YAML (a superset of JSON) safely; errors name line and column."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(source, [Violation(where, f"malformed YAML: {problem}")]) from exc
    return data


def validate(model: type[M], data: Any, source: str) -> M:
    if not isinstance(data, dict):
        kind = "empty document" if data is None else f"a {type(data).__name__}"
        raise ProfileError(source, [Violation("", f"expected a mapping, got {kind}")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(source, violations_from(exc)) from exc


def load_text(model: type[M], text: str | bytes, source: str) -> M:
    return validate(model, parse_text(text, source), source)


def load_file(model: type[M], path: Path) -> M:
    """Read and validate one document; unreadable files are a ProfileError too."""
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise ProfileError(str(path), [Violation(
                "", f"file is {size} bytes, larger than the {MAX_DOCUMENT_BYTES} limit")])
        text = path.read_bytes()
    except OSError as exc:
        raise ProfileError(str(path), [Violation("", f"cannot read: {exc.strerror}")]) from exc
    return load_text(model, text, str(path))
