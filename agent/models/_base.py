"""Shared model base: frozen, strict about unknown fields, documented per field."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

# DNS-label style: safe as a cgroup directory name, a topic level and a k8s name.
Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"),
]


class Frozen(BaseModel):
    """Immutable model that refuses unknown fields; attribute docstrings become docs."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        populate_by_name=True,
    )
