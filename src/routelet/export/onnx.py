"""Export an embed router to one ONNX graph (token ids in, calibrated probabilities out) and check it.

    files = build_onnx_router(encoder_folder, coef, intercept, temperature, "router/")
    probs = onnx_probs("router/", texts)                      # onnxruntime + tokenizers, no torch
    ref = torch_probs(encoder_folder, coef, intercept, temperature, texts)
    check_parity(parity(ref, probs), min_agreement=floor, where="export_onnx.min_agreement")

The graph is the sentence-transformers encoder (transformer, then the pooling and the optional
Normalize read from the saved model, so it gives exactly what `encode()` gave at training), then
the logistic-regression head with the temperature folded in, then softmax. `model.onnx` is int8
(`routelet.export.int8.quantize`): by default dynamic quantisation, every encoder MatMul with int8 weights per output
channel and int8 activations; the head stays fp32 because it is tiny and its error lands directly
on the probabilities. Texts must already be preprocessed, as everywhere else.

What int8 costs, measured with MiniLM-L6 on CLINC150 (151 intents summed into 11 domain routes),
5,500 holdout rows, route agreement with the trained model (the fp32 graph matches encode() to
3e-6 in probability):
- plain `quantize_dynamic` (per-channel weights, one activation scale per tensor): 98.6% with the
  frozen-MiniLM head (embed), 98.1-98.8% with SetFit's in earlier measurements. The
  scale is set by outliers of two kinds: a few channels (max |x| 25-30 where the median channel
  stays near 2) and the special tokens, larger than the rest in every channel.
- with both taken out (the 4 largest channels of each MatMul input multiplied in fp32 beside the
  int8 product, and each token divided by its own max |x| before it): 99.69% with SetFit (max
  |dp| 0.08). With embed on the calibration split, mean KL to fp32 fell from 0.0040 to 0.00017,
  the level of int8 weights alone (0.00018); either rewrite alone left 0.0008-0.0011.
- blockwise MatMulNBits (8-bit, blocks of 32, activations per token and block): 99.87% with SetFit.
Single query, one thread, onnxruntime session alone (2026-12-01, idle 2-vCPU Ice Lake host): plain
dynamic 2.8 ms, dynamic with the rewrites 4.2 ms (they add about 150 small nodes), blockwise
5.2-5.7 ms, fp32 6 ms.

The DVC stage `stages/export_onnx.py` calls these; torch is only imported to build and for the
reference, so `onnx_probs` runs where only the runtime install is.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from routelet.export.int8 import quantize as quantize_graph
from routelet.serving.onnx_model import OnnxModel

MODEL_FILE = "model.onnx"
FP32_FILE = "model.fp32.onnx"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17
# Pooling modes the graph reproduces (sentence-transformers' names). "weightedmean" is left out.
POOLING_MODES = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")
# Encoders whose export goes through onnxruntime's transformer optimizer (model_type "bert"), the
# ones tested; other architectures ship the plain export. Attention is fused as MultiHeadAttention,
# which leaves the Q/K/V projections as MatMuls that int8 quantises: the graph shrinks from 672
# nodes to about 90, and int8 ran 3% faster than the unfused graph at the same route agreement.
_FUSED_MODEL_TYPES = {"bert"}


class UnsupportedEncoder(ValueError):
    """The sentence-transformers model has a part the ONNX graph cannot reproduce."""


# ---------------------------------------------------------------- reading the encoder


def _load_sentence_transformer(encoder_folder: str | Path, max_length: int, layers: int | None = None):
    from sentence_transformers import SentenceTransformer

    from routelet.families.encoders import keep_first_layers

    model = SentenceTransformer(str(encoder_folder), device="cpu")
    model.max_seq_length = max_length
    if layers is not None:
        keep_first_layers(model, layers)
    return model.eval()


def _readout(model, encoder_folder) -> tuple[object, tuple[str, ...], bool]:
    """(transformer module, pooling modes, normalize?) of a Transformer -> Pooling [-> Normalize] model."""
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    modules = list(model)
    kinds = [type(m).__name__ for m in modules]
    shape_ok = (
        len(modules) in (2, 3)
        and isinstance(modules[0], Transformer)
        and isinstance(modules[1], Pooling)
        and (len(modules) == 2 or isinstance(modules[2], Normalize))
    )
    if not shape_ok:
        raise UnsupportedEncoder(
            f"{encoder_folder}/modules.json: the ONNX export handles Transformer -> Pooling [-> Normalize], "
            f"this model is {' -> '.join(kinds)}. Pick an encoder of that shape in params.yaml `encoders`, "
            "or extend routelet.export.onnx._router_graph for the extra module."
        )
    if getattr(model, "default_prompt_name", None):
        raise UnsupportedEncoder(
            f"{encoder_folder}/config_sentence_transformers.json: default_prompt_name="
            f"{model.default_prompt_name!r} makes encode() prepend a prompt the exported tokenizer would not. "
            "Clear default_prompt_name in that file (and retrain), or use an encoder without a default prompt."
        )
    pooling = modules[1]
    modes = (pooling.pooling_mode,) if isinstance(pooling.pooling_mode, str) else tuple(pooling.pooling_mode)
    unsupported = [m for m in modes if m not in POOLING_MODES]
    if unsupported:
        raise UnsupportedEncoder(
            f"{encoder_folder}/{_module_path(encoder_folder, 1)}: pooling mode {unsupported} is not in the ONNX "
            f"export (supported: {', '.join(POOLING_MODES)}). Use an encoder with one of those poolings."
        )
    if modules[2:] and modules[2].module_input_name != "sentence_embedding":
        raise UnsupportedEncoder(
            f"{encoder_folder}: Normalize acts on {modules[2].module_input_name!r}, the export only "
            "normalises the pooled sentence embedding."
        )
    return modules[0], modes, len(modules) == 3


def _module_path(encoder_folder, index: int) -> str:
    try:
        entry = json.loads((Path(encoder_folder) / "modules.json").read_text())[index]
        return f"{entry['path']}/config.json" if entry.get("path") else "config.json"
    except (OSError, IndexError, KeyError, ValueError):
        return "modules.json"


def _head(coef: np.ndarray, intercept: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Head as (n_labels, dim), (n_labels,) float32. A binary scikit-learn head (one row, sigmoid)
    becomes the two-row softmax [0, w] that gives the same probabilities."""
    coef = np.asarray(coef, dtype=np.float32)
    intercept = np.asarray(intercept, dtype=np.float32).reshape(-1)
    if coef.ndim != 2 or coef.shape[0] != intercept.shape[0]:
        raise ValueError(
            f"head: coef {coef.shape} and intercept {intercept.shape} do not match (want (n_labels, dim), (n_labels,))"
        )
    if not temperature > 0:
        raise ValueError(f"head: temperature must be > 0, got {temperature} (see the calibrate stage's output)")
    if coef.shape[0] == 1:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    return coef, intercept


# ---------------------------------------------------------------- the graph


def _router_graph(transformer, modes: tuple[str, ...], normalize: bool, coef, intercept, temperature: float):
    import torch

    class _RouterGraph(torch.nn.Module):
        """input_ids, attention_mask -> probs, right-padded batches (the saved tokenizer pads right)."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = transformer.auto_model
            if hasattr(self.encoder, "set_attn_implementation"):
                # Traced SDPA leaves NaN guards and mask arithmetic that onnxruntime's optimizer does
                # not recognise as attention; eager attention fuses into one Attention op per layer.
                self.encoder.set_attn_implementation("eager")
            self.zero_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
            self.head = torch.nn.Linear(coef.shape[1], coef.shape[0])
            with torch.no_grad():  # softmax(x W^T / T + b / T): the temperature costs no op
                self.head.weight.copy_(torch.from_numpy(coef / np.float32(temperature)))
                self.head.bias.copy_(torch.from_numpy(intercept / np.float32(temperature)))

        def forward(self, input_ids, attention_mask):
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.zero_token_types else {}
            tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = []
            for mode in modes:
                if mode == "cls":
                    pooled.append(tokens[:, 0])
                elif mode in ("mean", "mean_sqrt_len_tokens"):
                    count = mask.sum(dim=1).clamp(min=1e-9)
                    pooled.append((tokens * mask).sum(dim=1) / (count if mode == "mean" else count.sqrt()))
                elif mode == "max":
                    pooled.append(tokens.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
                elif mode == "lasttoken":
                    last = (attention_mask.sum(dim=1) - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, tokens.shape[-1])
                    pooled.append(tokens.gather(1, last).squeeze(1))
            embedding = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=-1)
            if normalize:
                embedding = torch.nn.functional.normalize(embedding, p=2, dim=-1)
            return torch.softmax(self.head(embedding), dim=-1)

    return _RouterGraph().eval()


def _export(graph, tokenizer, path: Path) -> None:
    import torch

    # Two rows of different lengths, so neither axis is traced as a constant and padding is seen.
    sample = tokenizer(["one two three four", "one"], padding=True, return_tensors="pt")
    ids, mask = sample["input_ids"].to(torch.int64), sample["attention_mask"].to(torch.int64)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and tracer notes on shape checks in
        # transformers' mask code that hold for every input here (the mask spans the sequence).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Exporting aten::index operator")  # mask index grids, never negative
        torch.onnx.export(
            graph,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["probs"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "probs": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _optimize(path: Path, config) -> bool:
    """Fuse attention / layer norm / gelu with onnxruntime's transformer optimizer, in place.
    Returns False (graph left as exported) where the optimizer or the architecture does not fit."""
    if getattr(config, "model_type", None) not in _FUSED_MODEL_TYPES:
        return False
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        return False
    options = FusionOptions("bert")
    options.use_multi_head_attention = True  # Q/K/V stay MatMuls, so int8 reaches them
    try:
        optimized = optimize_model(
            str(path),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=0,
            optimization_options=options,
        )
    except Exception as error:  # an optimisation only: onnxruntime fuses much of it again at load
        warnings.warn(f"onnxruntime transformer optimizer skipped ({type(error).__name__}: {error})", stacklevel=2)
        return False
    optimized.save_model_to_file(str(path))
    return True


def _save_tokenizer(transformer, path: Path, max_length: int) -> None:
    from tokenizers import Tokenizer

    backend = getattr(transformer.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedEncoder(
            f"{type(transformer.tokenizer).__name__} has no fast (tokenizers) backend, and the router folder "
            "ships a tokenizer.json. Save the encoder with a fast tokenizer (tokenizer.json in its folder)."
        )
    # The tokenizer sentence-transformers actually ran, copied so its state there stays untouched.
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.enable_truncation(max_length=max_length)
    pad_token = transformer.tokenizer.pad_token
    # Pad to the longest in the batch on the right: the graph's CLS / last-token pooling assume it,
    # and a fixed padding length (MiniLM's file pads to 128) would cost many times the compute.
    tokenizer.enable_padding(direction="right", pad_id=transformer.tokenizer.pad_token_id, pad_token=pad_token)
    tokenizer.save(str(path))


def build_onnx_router(
    encoder_folder: str | Path,
    coef: np.ndarray,
    intercept: np.ndarray,
    temperature: float,
    out_folder: str | Path,
    max_length: int = 64,
    quantize: bool = True,
    keep_fp32: bool = False,
    optimize: bool = True,
    layers: int | None = None,
    int8: str = "dynamic",
    calibration: list[str] | None = None,
    outlier_channels: int = 4,
    normalize: bool = False,
) -> dict[str, str]:
    """Write model.onnx (int8 unless quantize=False) and tokenizer.json into out_folder.

    coef (n_labels, dim) and intercept (n_labels,) are the head trained on `encode()` output,
    temperature the calibrated one. keep_fp32 also keeps model.fp32.onnx (for parity checks);
    optimize runs onnxruntime's transformer fusions on BERT-like encoders before quantising; layers
    keeps only the encoder's first layers, as the model was trained with (EncoderSpec.layers);
    int8 is "dynamic" or "blockwise" (see routelet.export.int8); for dynamic, calibration (preprocessed texts,
    never the holdout) picks the outlier_channels channels per MatMul input kept in fp32.
    Returns the files for router.json: {"model": "model.onnx", "tokenizer": "tokenizer.json"}.
    """
    import torch

    coef, intercept = _head(coef, intercept, temperature)
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    model = _load_sentence_transformer(encoder_folder, max_length, layers)
    transformer, modes, unit_length = _readout(model, encoder_folder)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else coef.shape[1]
    if coef.shape[1] != dim:
        raise ValueError(
            f"head: coef has {coef.shape[1]} columns but {encoder_folder} embeds to {dim}: "
            "the head was trained on another encoder; retrain it with this one."
        )
    # normalize: unit-length embeddings even where the encoder has no Normalize module (cosine heads).
    graph = _router_graph(transformer, modes, normalize or unit_length, coef, intercept, temperature)
    _save_tokenizer(transformer, out / TOKENIZER_FILE, max_length)
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        fp32 = Path(scratch) / FP32_FILE
        shutil.copyfile(out / TOKENIZER_FILE, Path(scratch) / TOKENIZER_FILE)
        with torch.no_grad():
            _export(graph, transformer.tokenizer, fp32)
        if optimize:
            _optimize(fp32, transformer.auto_model.config)
        if quantize:
            quantize_graph(fp32, out / MODEL_FILE, int8, calibration, outlier_channels)
        else:
            shutil.copyfile(fp32, out / MODEL_FILE)
        if keep_fp32:
            shutil.copyfile(fp32, out / FP32_FILE)
        else:  # a stale fp32 file from an earlier run would not match this model.onnx
            (out / FP32_FILE).unlink(missing_ok=True)
    return {"model": MODEL_FILE, "tokenizer": TOKENIZER_FILE}


def torch_probs(
    encoder_folder: str | Path,
    coef: np.ndarray,
    intercept: np.ndarray,
    temperature: float,
    texts: list[str],
    max_length: int = 64,
    batch_size: int = 64,
    layers: int | None = None,
) -> np.ndarray:
    """The reference: SentenceTransformer.encode, then the head and softmax(logits / T) in fp32 numpy,
    i.e. what the trained EmbedModel gives on these (already-preprocessed) texts."""
    coef, intercept = _head(coef, intercept, temperature)
    model = _load_sentence_transformer(encoder_folder, max_length, layers)
    embeddings = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    logits = embeddings.astype(np.float32).reshape(len(texts), -1) @ coef.T + intercept
    z = logits / np.float32(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)




def onnx_probs(folder_or_model_path: str | Path, texts: list[str], threads: int = 1, batch_size: int = 64) -> np.ndarray:
    """Probabilities (n_texts, n_labels) from a router's ONNX model on already-preprocessed texts.
    A folder means its model.onnx; a .onnx file is run with the tokenizer.json beside it."""
    path = Path(folder_or_model_path)
    model_path = path / MODEL_FILE if path.is_dir() else path
    return OnnxModel(model_path, model_path.parent / TOKENIZER_FILE, threads)(texts, batch_size)
