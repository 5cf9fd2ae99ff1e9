"""The taxonomy: the one source of the label set and of what each route means.

A taxonomy file (YAML) lists routes. Each route has a name, a description (for the LLM teacher
and the docs), a `target` (what the caller runs: a handler name or an `org/model` id) and the
fine labels it owns (default: just its own name). Models train on fine labels and route by
summing their probabilities, so a domain route can own fifteen intents. One route may be the
reject route: out of scope, defer to a fallback.

    reject: oos
    routes:
      - name: banking
        description: Balances, transfers, bills and fraud on the user's bank account.
        target: handlers.banking
        labels: [balance, transfer, pay_bill]
      - name: oos
        description: Anything the assistant does not handle.
        target: org/fallback-model
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from routelet.serving.router_format import Route, check_routes, route_matrix


class Taxonomy(BaseModel):
    routes: list[Route] = Field(min_length=1)
    reject: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Taxonomy:
        check_routes(self.routes, reject=self.reject)
        return self

    @property
    def labels(self) -> list[str]:
        """Every fine label, in taxonomy order: the output order of every model."""
        return [label for route in self.routes for label in route.labels]

    @property
    def route_names(self) -> list[str]:
        return [route.name for route in self.routes]

    def route_of(self, label: str) -> str:
        return self._owner()[label]

    def _owner(self) -> dict[str, str]:
        return {label: route.name for route in self.routes for label in route.labels}

    def label_to_route_matrix(self, labels: list[str]) -> np.ndarray:
        """(len(labels), n_routes) 0/1 matrix: fine probabilities @ M = route probabilities."""
        return route_matrix(labels, self.routes)

    def as_routes_only(self) -> Taxonomy:
        """The same routes, each owning only itself: for training on routes instead of labels."""
        return Taxonomy(
            routes=[route.model_copy(update={"labels": [route.name]}) for route in self.routes],
            reject=self.reject,
        )

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @classmethod
    def from_labels(cls, labels: list[str]) -> Taxonomy:
        """No taxonomy file: each label found in the data is a route of its own."""
        return cls(routes=[Route(name=label) for label in sorted(set(labels))])

    @classmethod
    def load(cls, path: str | Path) -> Taxonomy:
        path = Path(path)
        try:
            # JSON is YAML too: the resolved taxonomy a stage saves loads the same way.
            return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'taxonomy'}: {e['msg']}" for e in error.errors()
            )
            raise ValueError(f"{path}: invalid taxonomy: {problems}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.model_dump(), indent=2) + "\n", encoding="utf-8")
