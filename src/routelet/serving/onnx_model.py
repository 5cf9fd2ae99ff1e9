"""The one ONNX runner: tokenizer.json + model.onnx (input_ids, attention_mask[, token_type_ids] ->
probs), used by the runtime to serve and by the export to calibrate int8 and check parity.

    model = OnnxModel("data/router/model.onnx", "data/router/tokenizer.json", threads=1)
    probs = model(["what's my balance"])       # texts already preprocessed

Texts are sorted by token length and run in chunks of ONNX_BATCH, each padded to its own longest
row: little padding waste for any batch size, results back in input order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from routelet.serving.router_format import router_error

ONNX_BATCH = 64  # rows per onnxruntime call: bounds memory and padding waste for any batch size
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _session(model: Path | bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # onnxruntime's own pool spins while idle (OMP_WAIT_POLICY does not reach it): on a small
    # machine that steals the core the next request needs (measured: 2 threads 6.4 -> 2.6 ms p50).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


class OnnxModel:
    """An ONNX router graph and its tokenizer. `model` is a path or serialised bytes; `max_length`
    (None: the tokenizer file's own truncation) caps tokens per text."""

    def __init__(self, model: str | Path | bytes, tokenizer: str | Path, threads: int = 1,
                 max_length: int | None = None) -> None:
        from tokenizers import Tokenizer

        where = "model bytes" if isinstance(model, bytes) else Path(model)
        for path in ([] if isinstance(model, bytes) else [Path(model)]) + [Path(tokenizer)]:
            if not path.is_file():
                raise router_error(path, "file is missing")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer))
        except Exception as exc:
            raise router_error(tokenizer, f"not a readable tokenizers file ({exc})") from None
        padding = self.tokenizer.padding or {}
        self.pad_id = padding.get("pad_id", self._find_pad_id())
        self.pad_left = padding.get("direction") == "left"
        # Padding is done here per chunk, after sorting by length; truncation by the tokenizer.
        self.tokenizer.no_padding()
        if max_length is not None:
            self.tokenizer.enable_truncation(max_length)
        try:
            self.session = _session(model if isinstance(model, bytes) else Path(model), max(1, int(threads)))
        except Exception as exc:
            raise router_error(where, f"onnxruntime cannot load it ({exc})") from None
        self.inputs = {i.name for i in self.session.get_inputs()}
        if "input_ids" not in self.inputs or self.inputs - set(INPUTS):
            raise router_error(where, f"graph inputs {sorted(self.inputs)} must be input_ids, attention_mask and "
                               "optionally token_type_ids")
        if "probs" not in {o.name for o in self.session.get_outputs()}:
            raise router_error(where, "graph has no output named 'probs'")

    def _find_pad_id(self) -> int:
        for token in ("[PAD]", "<pad>", "<|pad|>", "[pad]"):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def _feed(self, encodings: list) -> dict[str, np.ndarray]:
        width = max(1, max(len(e.ids) for e in encodings))
        n = len(encodings)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            cols = slice(width - len(enc.ids), width) if self.pad_left else slice(0, len(enc.ids))
            ids[row, cols] = enc.ids
            mask[row, cols] = enc.attention_mask
            types[row, cols] = enc.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: value for name, value in feed.items() if name in self.inputs}

    def feeds(self, texts: list[str], batch_size: int = ONNX_BATCH) -> Iterator[tuple[list[int], dict]]:
        """(row indices, onnxruntime feed) per chunk of texts of similar token length."""
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            yield rows, self._feed([encodings[i] for i in rows])

    def __call__(self, texts: list[str], batch_size: int = ONNX_BATCH) -> np.ndarray:
        out = None
        for rows, feed in self.feeds(texts, batch_size):
            probs = self.session.run(["probs"], feed)[0]
            if out is None:
                out = np.empty((len(texts), probs.shape[1]), dtype=np.float64)
            out[rows] = probs
        if out is None:
            width = self.session.get_outputs()[0].shape[1]
            return np.zeros((0, width if isinstance(width, int) else 0))
        return out
