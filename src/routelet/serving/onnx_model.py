"""The one ONNX runner: tokenizer.json + model.onnx (input_ids, attention_mask[, token_type_ids] ->
probs), used by the runtime to serve and by the export to calibrate int8 and check parity.

    model = OnnxModel("data/router/model.onnx", "data/router/tokenizer.json", threads=1)
    probs = model(["what's my balance"])       # texts already preprocessed

Texts are sorted by token length and run in chunks of at most ONNX_BATCH rows and ONNX_TOKENS
padded tokens, each padded to its own longest row: little padding waste for any batch size, memory
bounded per onnxruntime call, results back in input order. A row's result does not depend on the
other rows of its chunk (the export makes int8 activation scales per token, see
routelet.export.int8), so how texts are grouped changes nothing but speed.

`model.read(texts)` also says which texts hold a token the model knows: one that is not the
tokenizer's unknown token nor one of its special tokens ([CLS], [SEP], [PAD]...).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from routelet.serving.router_format import router_error

ONNX_BATCH = 64  # rows per onnxruntime call, for short texts; ONNX_TOKENS bounds the rest
# Padded tokens per onnxruntime call (16 rows of 64). onnxruntime's arena keeps its largest call's
# activations: measured with MiniLM int8, two threads routing 2,000-character texts, peak RSS 570 MB
# at 4,096 tokens, 385 MB at 2,048, 302 MB at 1,024 (fresh: 187 MB), and 1,024 ran 20% faster than
# 4,096 on 64-token texts (9.8 against 12.2 ms of CPU per text; smaller tensors stay in cache).
# Turning the arena off or mem patterns off did not lower the peak (glibc keeps the pages instead).
ONNX_TOKENS = 1024
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
        self._unreadable = self._unreadable_ids()
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

    def _unreadable_ids(self) -> np.ndarray:
        """True at the ids that carry no content: the unknown token, padding and special tokens."""
        ids = [self.pad_id] + [i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special]
        unk = getattr(self.tokenizer.model, "unk_token", None)
        if unk is not None and self.tokenizer.token_to_id(unk) is not None:
            ids.append(self.tokenizer.token_to_id(unk))
        table = np.zeros(max(self.tokenizer.get_vocab_size(with_added_tokens=True), max(ids) + 1), dtype=bool)
        table[ids] = True
        return table

    def _known(self, encoding) -> bool:
        ids = np.asarray(encoding.ids, dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < len(self._unreadable))]
        return bool(len(ids)) and not self._unreadable[ids].all()

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

    def _chunks(self, encodings: list, batch_size: int, max_tokens: int) -> Iterator[list[int]]:
        """Row indices sorted by token length, cut so that each chunk has at most `batch_size` rows and
        `max_tokens` padded tokens (a row longer than that runs alone)."""
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        chunk: list[int] = []
        for i in order:
            width = max(1, len(encodings[i].ids))  # the longest so far: rows are sorted
            if chunk and (len(chunk) == batch_size or (len(chunk) + 1) * width > max_tokens):
                yield chunk
                chunk = []
            chunk.append(i)
        if chunk:
            yield chunk

    def feeds(self, texts: list[str], batch_size: int = ONNX_BATCH,
              max_tokens: int = ONNX_TOKENS) -> Iterator[tuple[list[int], dict]]:
        """(row indices, onnxruntime feed) per chunk of texts of similar token length."""
        encodings = self.tokenizer.encode_batch(texts)
        for rows in self._chunks(encodings, batch_size, max_tokens):
            yield rows, self._feed([encodings[i] for i in rows])

    def read(self, texts: list[str], batch_size: int = ONNX_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, labels), whether each text holds a token the model knows (n,))."""
        encodings = self.tokenizer.encode_batch(texts)
        out = None
        for rows in self._chunks(encodings, batch_size, ONNX_TOKENS):
            probs = self.session.run(["probs"], self._feed([encodings[i] for i in rows]))[0]
            if out is None:
                out = np.empty((len(texts), probs.shape[1]), dtype=np.float64)
            out[rows] = probs
        if out is None:
            width = self.session.get_outputs()[0].shape[1]
            out = np.zeros((0, width if isinstance(width, int) else 0))
        return out, np.array([self._known(e) for e in encodings], dtype=bool)

    def __call__(self, texts: list[str], batch_size: int = ONNX_BATCH) -> np.ndarray:
        return self.read(texts, batch_size)[0]
