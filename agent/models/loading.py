"""Load YAML/JSON documents into models, turning every failure into a ProfileError."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from agent.errors import ProfileError, Violation

M = TypeVar("M", bound=BaseModel)

MAX_DOCUMENT_BYTES = 4 << 20
MAX_DEPTH = 64
"""Deeper nesting is refused before the parser recurses (a mission needs about 8)."""
MAX_INT_DIGITS = 64
MAX_NODES = 200_000
"""Values in one document after alias expansion (a 5000-workload mission has ~100k)."""
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes in the document once every alias is expanded (what a validator walks),
    counted in time linear in the *composed* graph; stops counting past ``limit``."""
    memo: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        got = memo.get(id(n))
        if got is not None:
            return got
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        memo[id(n)] = total
        return total

    return size(node)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader with a nesting limit, a limit on the document's size once aliases are
    expanded (no alias bomb), and short integers: a document of a few KB can then cost
    only about its size to load and to validate."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None and expanded_size(node, MAX_NODES) > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES} values once aliases "
                                "are expanded (alias bomb?)", node.start_mark)
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(str(node.value)) > MAX_INT_DIGITS:
            raise ConstructorError(None, None, f"integer of more than {MAX_INT_DIGITS} "
                                   "digits", node.start_mark)
        return int(super().construct_yaml_int(node))


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


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
            if loc and not _FIELD_NAME.match(str(loc[-1])):
                # Keys that are not field names may be someone's secret (a symlinked
                # file): never echo them into logs and events.
                loc = (*loc[:-1], "<unknown key>")
        found.append(Violation(format_loc(loc), msg))
    return found


def parse_text(text: str | bytes, source: str) -> Any:
    """Parse YAML (a superset of JSON) safely; errors name line and column."""
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(source, [Violation(where, f"malformed YAML: {problem}")]) from exc
    except (RecursionError, ValueError, MemoryError) as exc:
        # The loader's limits should make these impossible; a refusal all the same.
        raise ProfileError(source, [Violation("", f"unparseable: {type(exc).__name__}")]) \
            from None
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


def read_document(path: Path, within: Path | None = None) -> bytes:
    """A document's bytes: a regular file of bounded size, opened without blocking (a FIFO
    never hangs the caller); with ``within``, a symlink must stay inside that directory."""
    if within is not None and path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(within.resolve()):
            raise ProfileError(str(path), [Violation(
                "", "symlink out of the profile directory (not read)")])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise ProfileError(str(path), [Violation("", f"cannot read: {exc.strerror}")]) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError(str(path), [Violation("", "not a regular file")])
        if st.st_size > MAX_DOCUMENT_BYTES:
            raise ProfileError(str(path), [Violation(
                "", f"file is {st.st_size} bytes, larger than the {MAX_DOCUMENT_BYTES} "
                "limit")])
        data = os.read(fd, MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise ProfileError(str(path), [Violation("", f"cannot read: {exc.strerror}")]) from exc
    finally:
        os.close(fd)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ProfileError(str(path), [Violation("", "file grew past the size limit")])
    return data


def load_file(model: type[M], path: Path, within: Path | None = None) -> M:
    """Read and validate one document; unreadable files are a ProfileError too."""
    return load_text(model, read_document(path, within), str(path))
