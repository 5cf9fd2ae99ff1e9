"""Swap the served router while it serves: a `RouterHolder` routes like a `Router` and replaces it
atomically when its folder changes (a promotion or rollback moves `data/promoted/current`) or on
SIGHUP. The old router answers until the new one has loaded and passed its self-check.

    holder = RouterHolder.load("data/promoted/current", threads=1)
    holder.start(sighup=True)            # a watcher thread; SIGHUP reloads too (main thread only)
    app = create_app(holder)             # routelet.serving.server: the holder stands in for a Router
    ...
    holder.stop()

Self-check (`self_check`): a folder holding `selfcheck.jsonl` ({"text", "route"} lines, written by
`routelet promote` from what the router answered when it was promoted) must route every one of
those texts the same way again; every router must answer a few fixed texts (empty, emoji, plain
requests) with well-formed results. A failed load or check leaves the old router serving; the
error is logged and kept in `holder.status()`.

Each call (`route`, `probs`, `decide`) reads the current router once, so one batch is answered by
one router; the swap is one attribute assignment. Torch-free: the runtime only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

from routelet.serving.router_format import RouterError, router_error
from routelet.serving.runtime import Router

SELFCHECK_FILE = "selfcheck.jsonl"
# Inputs every router must survive: plain requests, nothing readable, a long repeat, non-Latin text.
FIXED_TEXTS = ["what's my account balance", "book a flight to paris", "hello", "", "   ", "🙂🙂",
               "ß" * 500, "¿dónde está mi tarjeta?", "передай привет"]
log = logging.getLogger("routelet.reload")


class SelfCheckError(RouterError):
    """A router folder that loads but does not route its known texts as it should."""


def read_selfcheck(folder: Path) -> list[tuple[str, str | None]]:
    """The (text, route) pairs of the folder's selfcheck.jsonl, or [] when it has none."""
    path = folder / SELFCHECK_FILE
    if not path.is_file():
        return []
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((row["text"], row["route"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SelfCheckError(f"{path}:{number}: not a {{\"text\", \"route\"}} JSON object ({exc}); "
                                 "re-promote the router to rewrite it") from None
    return pairs


def self_check(router: Router) -> int:
    """Raise SelfCheckError unless the router routes its known texts as promoted and answers the
    fixed texts with well-formed results. Returns how many texts it checked."""
    known = read_selfcheck(Path(router.folder))
    texts = [text for text, _ in known] + FIXED_TEXTS
    try:
        results = router.route(texts, top_k=1)
    except Exception as exc:
        raise router_error(router.folder, f"self-check: routing failed ({exc})") from None
    routes = set(router.info.route_names) | {None}
    for text, result in zip(texts, results):
        if result["route"] not in routes or not 0.0 <= result["confidence"] <= 1.0 + 1e-6 \
                or not math.isfinite(result["confidence"]):
            raise SelfCheckError(f"{router.folder}: self-check: a malformed result {result!r} for a "
                                 f"{len(text)}-character text; re-export the router")
    for number, ((_, expected), result) in enumerate(zip(known, results), start=1):
        if result["route"] != expected:
            raise SelfCheckError(
                f"{Path(router.folder) / SELFCHECK_FILE}: text {number} routes to {result['route']!r}, but "
                f"to {expected!r} when it was promoted: the folder's files changed since; restore them "
                "or promote the folder again")
    return len(texts)


def load_checked(folder: str | Path, threads: int = 1) -> Router:
    """Router.load (which already runs every tier once) followed by self_check."""
    router = Router.load(folder, threads=threads)
    self_check(router)
    return router


def folder_signature(path: Path) -> tuple:
    """What identifies a router folder's state: where a link points and each file's size, mtime and
    inode. Cheap enough to poll every second (a router folder holds a handful of files)."""
    real = os.path.realpath(path)
    files = []
    for root, _, names in os.walk(real):
        for name in names:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue  # removed while we looked: the next poll sees the new state
            files.append((os.path.relpath(os.path.join(root, name), real), st.st_size, st.st_mtime_ns, st.st_ino))
    return real, tuple(sorted(files))


class RouterHolder:
    """The served router, replaceable while it serves. It routes like a Router (`route`,
    `route_one`, `probs`, `decide`, and every other attribute of the current router)."""

    def __init__(self, router: Router, source: str | Path, threads: int = 1, interval: float = 1.0,
                 settle: float = 0.5, seen: tuple | None = None):
        self._router, self.source, self.threads = router, Path(source), threads
        # The folder's state when `router` was loaded from it: the watcher reloads when it differs.
        self._seen = folder_signature(self.source) if seen is None else seen
        self.interval, self.settle = interval, settle
        self._lock = threading.Lock()  # one reload at a time (the watcher and a direct call)
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_handler = None
        self._last: dict = {"ok": True, "model_version": router.model_version, "error": None,
                            "at": time.time(), "seconds": None}

    @classmethod
    def load(cls, source: str | Path, threads: int = 1, **options) -> RouterHolder:
        """Load and self-check `source` (a router folder or a link to one, e.g. data/promoted/current)."""
        seen = folder_signature(Path(source))  # before loading: a change during the load is not missed
        return cls(load_checked(os.path.realpath(source), threads), source, threads, seen=seen, **options)

    # ---- routing: each call reads the current router once

    @property
    def router(self) -> Router:
        return self._router

    def route(self, texts: list[str], top_k: int = 3) -> list[dict]:
        return self._router.route(texts, top_k=top_k)

    def route_one(self, text: str, top_k: int = 3) -> dict:
        return self._router.route_one(text, top_k=top_k)

    def probs(self, texts: list[str]):
        return self._router.probs(texts)

    def decide(self, texts: list[str]):
        return self._router.decide(texts)

    def __getattr__(self, name: str):
        # info, model_version, routes, labels, tier_names...: the current router's (read-only data).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._router, name)

    # ---- reloading

    def reload(self) -> dict:
        """Load `source` again (following its link now), self-check it, swap it in. On failure the
        old router keeps serving. Returns (and keeps, see status()) what happened."""
        with self._lock:
            started, old = time.monotonic(), self._router
            self._seen = folder_signature(self.source)  # a failed load is retried on the next change, not in a loop
            try:
                new = load_checked(os.path.realpath(self.source), self.threads)
            except Exception as exc:  # anything a broken folder raises: keep serving the old one
                outcome = {"ok": False, "model_version": old.model_version, "error": str(exc)}
                log.warning("reload of %s failed, still serving %s: %s", self.source, old.model_version, exc)
            else:
                self._router = new
                outcome = {"ok": True, "model_version": new.model_version, "error": None}
                log.warning("reloaded %s: %s -> %s", self.source, old.model_version, new.model_version)
            outcome.update(at=time.time(), seconds=round(time.monotonic() - started, 3))
            self._last = outcome
            return outcome

    def status(self) -> dict:
        """The served model_version and folder, and the last reload's outcome."""
        return {"model_version": self._router.model_version, "folder": str(self._router.folder),
                "source": str(self.source), "last_reload": dict(self._last)}

    def start(self, watch: bool = True, sighup: bool = False) -> RouterHolder:
        """Reload on a change of the folder (polled every `interval` s, loaded once it has been
        still for `settle` s) and, with `sighup`, on SIGHUP: only the main thread can take signals,
        and Windows has none, so elsewhere it says so and the watcher runs without."""
        if self._thread is not None:
            raise RuntimeError("RouterHolder.start() was called already; stop() it first")
        if sighup and not (hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()):
            log.warning("SIGHUP reload is off: signals reach only the main thread (and Windows has no SIGHUP)")
        elif sighup:
            # The handler only wakes the watcher: loading in a signal handler would stall the event loop.
            self._previous_handler = signal.signal(signal.SIGHUP, lambda *_: self._wake.set())
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, args=(watch,), name="routelet-reload", daemon=True)
        self._thread.start()
        return self

    def request_reload(self) -> None:
        """Ask the watcher thread to reload now (what SIGHUP does)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None

    def _watch(self, watch: bool) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not woken:
                if not watch or folder_signature(self.source) == self._seen:
                    continue
                self._settle()
            try:
                self.reload()
            except Exception:  # reload() catches load errors; this keeps the watcher alive whatever happens
                log.exception("reload of %s crashed", self.source)

    def _settle(self) -> None:
        """Wait until the folder has not changed for `settle` seconds (a copy or an export in
        progress), at most 30 s."""
        deadline, signature = time.monotonic() + 30, folder_signature(self.source)
        while time.monotonic() < deadline and not self._stop.wait(self.settle):
            again = folder_signature(self.source)
            if again == signature:
                return
            signature = again
