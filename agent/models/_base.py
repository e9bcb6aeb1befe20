"""Shared model base: frozen, strict about unknown fields, documented per field."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

# DNS-label style: safe as a cgroup directory name, a topic level and a k8s name.
Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"),
]


# Attribute docstrings become the JSON Schema's descriptions (sortie schema, the CRD, the
# docs). Reading them parses the models' source, ~25 ms of every start: the flight agent
# (sortie run), which shows no schema, starts without them (agent.cli sets this to 0).
DOCS = os.environ.get("SORTIE_MODEL_DOCS", "1") != "0"


class Frozen(BaseModel):
    """Immutable model that refuses unknown fields; attribute docstrings become docs."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=DOCS,
        populate_by_name=True,
    )
