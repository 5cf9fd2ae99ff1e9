"""Load a router folder and route texts, without torch, sklearn or transformers.

    from routelet.serving.runtime import Router
    router = Router.load("data/router", threads=1)
    router.route(["what's my balance", "book a flight"], top_k=3)
    router.route_one("what's my balance")

A router folder is `router.json` (`routelet.serving.router_format`: labels, routes, the abstain
policy, the tiers and their files) plus each tier's model files: `model.onnx` + `tokenizer.json`
(onnx kind, `onnx_model.OnnxModel`) or `tfidf.json` + `tfidf.npz` (tfidf kind, `tfidf_model`).
Tiers answer in order: a fast tier keeps a text when it is confident enough (its `accept`), the
last tier answers the rest. Only numpy, onnxruntime, tokenizers and pydantic are imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from routelet.serving.onnx_model import OnnxModel
from routelet.serving.preprocess import preprocess
from routelet.serving.router_format import RouterError, RouterInfo, Tier, router_error
from routelet.serving.tfidf_model import TfidfModel

__all__ = ["Router", "RouterError"]


def load_tier(folder: Path, info: RouterInfo, tier: Tier, threads: int = 1) -> Callable[[list[str]], np.ndarray]:
    """The model of one tier: preprocessed texts -> fine-label probabilities over info.labels."""
    if tier.kind == "tfidf":
        return TfidfModel(folder, tier.files, info.labels)
    tokenizer = folder / tier.files.get("tokenizer", info.input.tokenizer or "tokenizer.json")
    return OnnxModel(folder / tier.files["model"], tokenizer, threads, info.input.max_length)


class Router:
    """A loaded router folder. Build it with `Router.load(folder)`; `info` is its RouterInfo."""

    def __init__(self, folder: Path, info: RouterInfo, models: list[Callable[[list[str]], np.ndarray]]):
        self.folder, self.info, self._models = folder, info, models
        self.labels: list[str] = info.labels
        self.routes: list[dict] = [route.model_dump() for route in info.routes]
        self.model_version: str = info.model_version
        self.reject_route: str | None = info.reject_route
        self.tier_names = [tier.family for tier in info.tiers]
        self._membership = info.route_matrix()  # fine probs (n, labels) @ it = route probs (n, routes)
        self._reject = info.reject_index

    @classmethod
    def load(cls, folder: str | Path = "router", threads: int = 1) -> Router:
        """Read and check a router folder; RouterError says what is wrong and what to do."""
        folder = Path(folder)
        info = RouterInfo.read(folder)
        router = cls(folder, info, [load_tier(folder, info, tier, threads) for tier in info.tiers])
        router._probe()
        return router

    def _probe(self) -> None:
        """Run one text through every tier now, so a broken model fails at load, not at serve."""
        for tier, model in zip(self.info.tiers, self._models):
            where = self.folder / tier.files["model"]
            try:
                probs = model(["hello"])
            except Exception as exc:
                raise router_error(where, f"the model fails to run ({exc})") from None
            if probs.shape != (1, len(self.labels)) or not np.all(np.isfinite(probs)):
                raise router_error(where, f"the model outputs shape {probs.shape} but router.json has "
                                   f"{len(self.labels)} labels")

    def decide(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(fine-label probabilities, index of the tier that answered) per text. A fast tier answers
        when its top route is not the reject route and its route confidence reaches its `accept`."""
        if isinstance(texts, str):
            raise TypeError("probs() and route() take a list of texts; use route_one(text)")
        prepared = [preprocess(t) for t in texts]
        probs = np.zeros((len(texts), len(self.labels)))
        answered_by = np.full(len(texts), len(self._models) - 1)
        todo = np.arange(len(texts))
        for index, (tier, model) in enumerate(zip(self.info.tiers, self._models)):
            if not len(todo):
                break
            tier_probs = np.asarray(model([prepared[i] for i in todo]), dtype=np.float64)
            if tier.accept is None:
                probs[todo] = tier_probs
                break
            route_probs = tier_probs @ self._membership
            keep = route_probs.max(axis=1) >= tier.accept
            if self._reject is not None:
                keep &= route_probs.argmax(axis=1) != self._reject
            probs[todo[keep]], answered_by[todo[keep]] = tier_probs[keep], index
            todo = todo[~keep]
        return probs, answered_by

    def probs(self, texts: list[str]) -> np.ndarray:
        """Preprocessed fine-label probabilities, shape (len(texts), len(labels))."""
        return self.decide(texts)[0]

    def route(self, texts: list[str], top_k: int = 3) -> list[dict]:
        """One result per text: route, target, confidence, abstain, top_k routes, the tier that
        answered and model_version."""
        probs, answered_by = self.decide(texts)
        route_probs = probs @ self._membership
        abstains = self.info.abstain.abstains(route_probs, self._reject) if len(texts) else []
        top_k = max(1, min(int(top_k), len(self.routes)))
        results = []
        for row, abstain, tier in zip(route_probs, abstains, answered_by):
            order = np.argsort(-row, kind="stable")
            chosen = self._reject if abstain else order[0]
            results.append({
                "route": None if chosen is None else self.routes[chosen]["name"],
                "target": None if chosen is None else self.routes[chosen]["target"],
                "confidence": float(row[order[0]]),
                "abstain": bool(abstain),
                "top_k": [{"route": self.routes[j]["name"], "target": self.routes[j]["target"], "p": float(row[j])}
                          for j in order[:top_k]],
                "tier": self.tier_names[tier],
                "model_version": self.model_version,
            })
        return results

    def route_one(self, text: str, top_k: int = 3) -> dict:
        """route() for a single text."""
        return self.route([text], top_k=top_k)[0]

    def __repr__(self) -> str:
        return f"Router({str(self.folder)!r}, tiers={self.tier_names!r}, model_version={self.model_version!r})"
