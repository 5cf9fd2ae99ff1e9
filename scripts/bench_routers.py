"""The backends the bench compares, as specs for scripts.bench_measure, built from the shipped router
folder, the trained families and the prepared data.

    backends = Backends(Path("data/router"), Path("data/models"), Path("data/prepared"), calibration, scratch)
    backends.spec("tiered")        # {"kind": "router", "folder": ...}

  tiered               the shipped router when it has tiers; else the fast family (`fast`, TF-IDF) before
                       the encoder family, assembled as the export stage would (routelet.export.tiers:
                       accept chosen on the calibration split)
  onnx-int8            the encoder family alone, int8 (the shipped folder, or its tier's subfolder)
  onnx-fp32, onnx-int8-blockwise
                       the encoder family exported again through Family.export (ExportOptions int8=fp32 /
                       blockwise), router.json by routelet.export.ship.build_router
  tfidf                the fast family alone, exported through its own Family.export
  torch-fp32           the encoder family's training-side model: Family.reference (uncached; SetFit's
                       fine-tuned body and head) + softmax at its calibrated temperature
  semantic-router      aurelio-labs semantic-router with the family's base encoder (a local folder) and
                       the same routes: utterances are each in-scope route's training texts, capped
"""

from __future__ import annotations

import random
import shutil
from collections import defaultdict
from functools import cached_property
from pathlib import Path

from routelet.data.dataset import load_prepared
from routelet.serving.router_format import RouterInfo

BACKENDS = ("tiered", "onnx-int8", "onnx-fp32", "onnx-int8-blockwise", "tfidf", "torch-fp32", "semantic-router")
PEER_EXTRA = "pip install -e '.[bench]' (semantic-router)"


def semantic_router_missing() -> str | None:
    """Why the semantic-router backend cannot run here, or None."""
    import importlib.util

    return None if importlib.util.find_spec("semantic_router") else f"semantic-router is not installed: {PEER_EXTRA}"


class Backends:
    """Specs for the backends, each built (and exported into `scratch`) only when asked for."""

    def __init__(self, router: Path, models: Path, prepared: Path, calibration: dict, scratch: Path,
                 family: str | None = None, fast: str = "tfidf", utterances_per_route: int = 200,
                 oos_tolerance: float = 0.0) -> None:
        self.router, self.models, self.scratch = Path(router), Path(models), Path(scratch)
        self.prepared, self.calibration = load_prepared(prepared), calibration
        self.info = RouterInfo.read(self.router)
        self.family, self.fast, self.cap = family or self.info.family, fast, utterances_per_route
        self.oos_tolerance = oos_tolerance
        for name in (self.family, self.fast):
            if not (self.models / name / "family.json").is_file() or name not in calibration:
                raise SystemExit(f"{self.models / name}: no trained, calibrated family {name!r}; run `dvc repro` "
                                 "first, or pass --family / --fast with families of params.yaml `train`")
        from routelet.families import trained_class

        if not trained_class(self.family, self.models / self.family).uses_encoder:
            raise SystemExit(f"--family {self.family!r} has no encoder: the bench compares an encoder router with "
                             "its tiers and peers; pass --family setfit (or another encoder family)")

    def spec(self, backend: str) -> dict:
        if backend == "torch-fp32":
            return {"kind": "torch", "name": self.family, "folder": str(self.models / self.family),
                    "temperature": self.calibration[self.family]["temperature"]}
        if backend == "semantic-router":
            return {"kind": "semantic-router", "encoder": self.base_encoder, "routes": self.utterances()}
        folder = {"tiered": lambda: self.tiered, "onnx-int8": lambda: self.encoder_only,
                  "onnx-fp32": lambda: self.export(self.family, "fp32"),
                  "onnx-int8-blockwise": lambda: self.export(self.family, "blockwise"),
                  "tfidf": lambda: self.fast_only}[backend]()
        return {"kind": "router", "folder": str(folder)}

    # -- router folders ----------------------------------------------------------------------------

    def _tier_folder(self, name: str) -> Path | None:
        """The shipped folder (one tier) or its subfolder (several) that serves `name` alone."""
        for tier in self.info.tiers:
            if tier.family == name:
                return self.router if len(self.info.tiers) == 1 else self.router / Path(tier.files["model"]).parent
        return None

    @cached_property
    def encoder_only(self) -> Path:
        return self._tier_folder(self.family) or self.export(self.family, "dynamic")

    @cached_property
    def fast_only(self) -> Path:
        return self._tier_folder(self.fast) or self.export(self.fast, "fp32")

    @cached_property
    def tiered(self) -> Path:
        if len(self.info.tiers) > 1:
            return self.router
        from routelet.export.tiers import assemble_tiers

        out = self.scratch / "tiered"
        for name, folder in ((self.fast, self.fast_only), (self.family, self.encoder_only)):
            shutil.copytree(folder, out / name)
        info, _ = assemble_tiers(out, [self.fast, self.family], self.prepared.texts("calib"),
                                 self.prepared.route_ids("calib"), oos_tolerance=self.oos_tolerance)
        print(f"bench: tiered router assembled: {' then '.join(t.family for t in info.tiers)}, "
              f"accept {info.tiers[0].accept if len(info.tiers) > 1 else None}", flush=True)
        return out

    def export(self, name: str, int8: str) -> Path:
        """`name` exported into scratch with this int8 mode, through its family's own export."""
        from routelet.export.ship import build_router
        from routelet.families import load_trained
        from routelet.families.base import ExportOptions

        out = self.scratch / f"{name}-{int8}"
        if not (out / "router.json").is_file():
            options = ExportOptions(int8=int8, calibration=tuple(self.prepared.texts("calib")))
            build_router(load_trained(name, self.models / name), self.models / name, self.calibration[name],
                         self.prepared.taxonomy, options, out, hashes={})
        return out

    # -- the peer --------------------------------------------------------------------------------

    @cached_property
    def base_encoder(self) -> str:
        """The encoder the family was trained from (not SetFit's fine-tuned body): a local folder."""
        from routelet.families import load_trained

        return str(load_trained(self.family, self.models / self.family).model.encoder.resolve())

    def utterances(self, seed: int = 0) -> dict[str, list[str]]:
        """Each in-scope route's training texts, at most `cap` each (a seeded sample)."""
        taxonomy = self.prepared.taxonomy
        by_route: dict[str, list[str]] = defaultdict(list)
        for text, label in zip(self.prepared.texts("train"), self.prepared.labels("train")):
            if taxonomy.route_of(label) != taxonomy.reject:
                by_route[taxonomy.route_of(label)].append(text)
        rng = random.Random(seed)
        return {route: rng.sample(texts, min(self.cap, len(texts))) for route, texts in sorted(by_route.items())}
