"""Load a router folder and route texts, without torch, sklearn or transformers.

    from routelet.serving.runtime import Router
    router = Router.load("data/router", threads=1)
    router.route(["what's my balance", "book a flight"], top_k=3)
    router.route_one("what's my balance")

A router folder is `router.json` (`routelet.serving.router_format`: labels, routes, the abstain
policy, the tiers and their files) plus each tier's model files: `model.onnx` + `tokenizer.json`
(onnx kind, `onnx_model.OnnxModel`) or `tfidf.json` + `tfidf.npz` (tfidf kind, `tfidf_model`).
Tiers answer in order: a fast tier keeps a text when it read something in it and is confident
enough (its `accept`), the last tier answers the rest. Only numpy, onnxruntime, tokenizers and
pydantic are imported; Pillow and the image tiers (image_models) only once an image router loads.

A result abstains (`abstain` true, `route` the reject route, or null without one) and says why in
`abstain_reason` (null when it does not abstain):
  "no readable content"  after preprocess the text has no letter or digit in any script: empty,
                         blank, control, zero-width or non-characters, emoji or punctuation only
  "no known tokens"      the tier that answered knows none of its tokens: an encoder tier saw only
                         its tokenizer's unknown and special tokens ([UNK], [CLS], [SEP]), a tfidf
                         tier no n-gram of its vocabulary ("ß" * 500, a script the tokenizer lacks)
  "reject route"         the top route is the reject route
  "low confidence"       the top route is under the policy's threshold, or leads the second route
                         by less than its margin
The first two look at one text alone, like everything else here: a text's result never depends on
what else is in its batch (the int8 export quantises each token on its own; see onnx_model).
`confidence` is the top route's probability, `p` the probability of the route returned (the reject
route's own when abstaining).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from routelet.serving.onnx_model import OnnxModel
from routelet.serving.preprocess import preprocess
from routelet.serving.router_format import RouterError, RouterInfo, Tier, router_error
from routelet.serving.tfidf_model import TfidfModel

__all__ = ["Router", "RouterError", "NO_CONTENT", "NO_KNOWN_TOKENS", "REJECT_ROUTE", "LOW_CONFIDENCE"]

NO_CONTENT, NO_KNOWN_TOKENS = "no readable content", "no known tokens"
REJECT_ROUTE, LOW_CONFIDENCE = "reject route", "low confidence"
_CONTENT = re.compile(r"[^\W_]")  # a letter or a digit, in any script


def _images():
    """routelet.serving.image_models, imported on first use: a text router's process never loads Pillow."""
    from routelet.serving import image_models

    return image_models


def load_tier(folder: Path, info: RouterInfo, tier: Tier, threads: int = 1):
    """The model of one tier: `model.read(preprocessed texts or decoded images)` -> (fine-label
    probabilities over info.labels, whether each input holds something the model knows)."""
    if info.input.modality == "image":
        return _images().load_image_tier(folder, info, tier, threads)
    if tier.kind == "tfidf":
        return TfidfModel(folder, tier.files, info.labels)
    tokenizer = folder / tier.files.get("tokenizer", info.input.tokenizer or "tokenizer.json")
    return OnnxModel(folder / tier.files["model"], tokenizer, threads, info.input.max_length)


class Router:
    """A loaded router folder. Build it with `Router.load(folder)`; `info` is its RouterInfo."""

    def __init__(self, folder: Path, info: RouterInfo, models: list[OnnxModel | TfidfModel]):
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
                probs = model([_images().probe_image() if self.info.input.modality == "image" else "hello"])
            except Exception as exc:
                raise router_error(where, f"the model fails to run ({exc})") from None
            if probs.shape != (1, len(self.labels)) or not np.all(np.isfinite(probs)):
                raise router_error(where, f"the model outputs shape {probs.shape} but router.json has "
                                   f"{len(self.labels)} labels")

    def decide(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(fine-label probabilities, index of the tier that answered) per text. A fast tier answers
        when it read a known token, its top route is not the reject route and its route confidence
        reaches its `accept`."""
        probs, answered_by, _ = self._decide(texts)
        return probs, answered_by

    def _decide(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """decide() plus, per text, why it must abstain whatever the model says (None: it need not)."""
        if isinstance(texts, str):
            raise TypeError("probs() and route() take a list of texts; use route_one(text)")
        prepared, problems = self._prepare(texts)
        readable = np.array([problem is None for problem in problems], dtype=bool)
        probs = np.zeros((len(texts), len(self.labels)))
        known = np.zeros(len(texts), dtype=bool)
        answered_by = np.full(len(texts), len(self._models) - 1)
        todo = np.arange(len(texts))
        for index, (tier, model) in enumerate(zip(self.info.tiers, self._models)):
            if not len(todo):
                break
            tier_probs, tier_known = model.read([prepared[i] for i in todo])
            tier_probs = np.asarray(tier_probs, dtype=np.float64)
            if tier.accept is None:
                probs[todo], known[todo] = tier_probs, tier_known
                break
            route_probs = self._route_probs(tier_probs)
            keep = (route_probs.max(axis=1) >= tier.accept) & tier_known & readable[todo]
            if self._reject is not None:
                keep &= route_probs.argmax(axis=1) != self._reject
            probs[todo[keep]], answered_by[todo[keep]], known[todo[keep]] = tier_probs[keep], index, True
            todo = todo[~keep]
        forced = [problem or (None if k else NO_KNOWN_TOKENS) for problem, k in zip(problems, known)]
        return probs, answered_by, forced

    def _prepare(self, inputs: list) -> tuple[list, list[str | None]]:
        """What the tiers read, and per input why nothing in it can be read (None: it can): texts go
        through the one preprocess; an image router takes bytes, a path or a PIL image, decoded with
        the guards of routelet.serving.image_input (a rejected image abstains with the reason)."""
        if self.info.input.modality != "image":
            prepared = [preprocess(t) for t in inputs]
            return prepared, [None if _CONTENT.search(t) else NO_CONTENT for t in prepared]
        return _images().open_images(inputs, self.info.input)

    def _route_probs(self, probs: np.ndarray) -> np.ndarray:
        """Fine-label probabilities summed into routes row by row: a matrix product over the batch
        sums in an order set by its row count (measured: 1e-16 apart with 15 or more labels)."""
        return np.array([row @ self._membership for row in probs]).reshape(len(probs), len(self.routes))

    def probs(self, texts: list[str]) -> np.ndarray:
        """Preprocessed fine-label probabilities, shape (len(texts), len(labels))."""
        return self.decide(texts)[0]

    def _reasons(self, route_probs: np.ndarray, forced: list[str | None]) -> list[str | None]:
        """Why each text abstains (see the module docstring), None where it does not."""
        if not len(route_probs):
            return []
        policy = self.info.abstain
        reasons = []
        for reason, gated, best in zip(forced, policy.abstains(route_probs, self._reject), route_probs.argmax(axis=1)):
            if reason is None and gated:
                reason = REJECT_ROUTE if policy.reject_class and best == self._reject else LOW_CONFIDENCE
            reasons.append(reason)
        return reasons

    def route(self, texts: list[str], top_k: int = 3) -> list[dict]:
        """One result per text: route, target, p, confidence, abstain, abstain_reason, top_k routes,
        the tier that answered and model_version."""
        probs, answered_by, forced = self._decide(texts)
        route_probs = self._route_probs(probs)
        top_k = max(1, min(int(top_k), len(self.routes)))
        results = []
        for row, reason, tier in zip(route_probs, self._reasons(route_probs, forced), answered_by):
            order = np.argsort(-row, kind="stable")
            chosen = self._reject if reason is not None else order[0]
            results.append({
                "route": None if chosen is None else self.routes[chosen]["name"],
                "target": None if chosen is None else self.routes[chosen]["target"],
                "p": None if chosen is None else float(row[chosen]),
                "confidence": float(row[order[0]]),
                "abstain": reason is not None,
                "abstain_reason": reason,
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
