"""Export an embed router to one ONNX graph (token ids in, calibrated probabilities out) and check it.

    files = build_onnx_router(encoder_folder, coef, intercept, temperature, "router/")
    probs = onnx_probs("router/", texts)                      # onnxruntime + tokenizers, no torch
    ref = torch_probs(encoder_folder, coef, intercept, temperature, texts)
    check_parity(parity(ref, probs), min_agreement=floor, where="export_onnx.min_agreement")

The graph is the sentence-transformers encoder (transformer, then the pooling and the optional
Normalize read from the saved model, so it gives exactly what `encode()` gave at training), then
the logistic-regression head with the temperature folded in, then softmax. `model.onnx` is int8
(`_quantize`): by default dynamic quantisation, every encoder MatMul with int8 weights per output
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


class ParityError(ValueError):
    """The exported router disagrees with the trained model more than the floor allows."""


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


def _quantize(source: Path, target: Path, int8: str, calibration: list[str] | None, outlier_channels: int) -> None:
    """int8 weights for every encoder MatMul; the head stays fp32 (tiny, and its error lands directly
    on the probabilities). Measured in the module docstring.

    dynamic: weights int8 per output channel, activations quantised at run time (MatMulInteger on
    VNNI). onnxruntime sets one activation scale per tensor, which a few outliers decide: so with
    calibration texts the `outlier_channels` channels of largest |x| of each MatMul input leave the
    int8 product and are multiplied in fp32 beside it, and each token is divided by its own max |x|
    before the product (and multiplied back after), which makes the scale per token.
    blockwise: MatMulNBits, 8-bit weights in blocks of 32, activations quantised per token and
    block (accuracy level 4): closest to fp32, slower."""
    import onnx

    model = onnx.load(str(source))
    head = [node.name for node in model.graph.node if node.name.startswith("/head/")]
    if int8 == "blockwise":
        import logging

        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # Importing it sets the root logger to INFO and logs every node: keep its own notes quiet.
        logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                                         nodes_to_exclude=head)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
        return
    if int8 != "dynamic":
        raise ValueError(f"int8 is {int8!r}: use 'dynamic' or 'blockwise' (export_onnx.int8 in params.yaml)")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_nodes = _rewrite_for_int8(model, source.parent / TOKENIZER_FILE, calibration, outlier_channels, set(head))
    staged = source.with_name("rewritten.onnx")  # beside the source, in the build's scratch folder
    onnx.save(model, str(staged))
    # Shape inference stops at the fused (com.microsoft) attention ops: every tensor here is float.
    quantize_dynamic(str(staged), str(target), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], nodes_to_exclude=sorted(fp32_nodes),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _rewrite_for_int8(model, tokenizer_path: Path, calibration: list[str] | None, outlier_channels: int,
                      exclude: set[str]) -> set[str]:
    """Rewrite the fp32 graph in place so that per-tensor int8 fits it (outlier split when there are
    calibration texts, then per-token scales); the result is the same function in fp32. Returns the
    MatMuls to leave in fp32: `exclude` and the outlier side products."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp32_nodes = set(exclude)
    if calibration and outlier_channels > 0:
        groups = _weight_matmuls(model, exclude=fp32_nodes)
        maxima = _activation_maxima(model, tokenizer_path, list(groups), calibration)
        fp32_nodes.update(_split_outliers(model, groups, maxima, outlier_channels))
    _per_token_scales(model, _weight_matmuls(model, exclude=fp32_nodes))
    OnnxModel(model).topological_sort()  # the new nodes were appended at the end
    return fp32_nodes


def _weight_matmuls(model, exclude: set[str]) -> dict[str, list]:
    """MatMuls with a constant 2-D weight, grouped by the activation they read (Q, K and V share one)."""
    weights = {w.name for w in model.graph.initializer if len(w.dims) == 2}
    groups: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.name not in exclude and node.input[1] in weights:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _activation_maxima(model, tokenizer_path: Path, tensors: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    """max |x| per channel of each named tensor of `model` over the real (unpadded) tokens of `texts`."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in tensors)
    session = onnx_session(probe.SerializeToString())
    tokenizer = _tokenizer(tokenizer_path)
    maxima = {name: None for name in tensors}
    for _, feed in _feeds(tokenizer, texts, {i.name for i in session.get_inputs()}, batch_size=64):
        real = feed["attention_mask"].astype(bool)
        for name, value in zip(tensors, session.run(tensors, feed)):
            top = np.abs(value[real]).max(axis=0)
            maxima[name] = top if maxima[name] is None else np.maximum(maxima[name], top)
    return maxima


def _split_outliers(model, groups: dict[str, list], maxima: dict[str, np.ndarray], k: int) -> list[str]:
    """x W = (x * keep) W' + x[:, O] W[O]: the k channels of largest |x| leave the int8 product (their
    rows of W' are zero) and are multiplied in fp32 beside it. Returns the fp32 MatMuls' names."""
    from onnx import helper, numpy_helper

    initializers = {w.name: w for w in model.graph.initializer}
    fp32_nodes, new_nodes = [], []
    for tensor, nodes in groups.items():
        outliers = np.sort(np.argsort(-maxima[tensor])[:k]).astype(np.int64)
        keep = np.ones(len(maxima[tensor]), np.float32)
        keep[outliers] = 0
        base = f"{tensor}_outliers"
        model.graph.initializer.extend([numpy_helper.from_array(keep, f"{base}_keep"),
                                        numpy_helper.from_array(outliers, f"{base}_index")])
        new_nodes.append(helper.make_node("Mul", [tensor, f"{base}_keep"], [f"{base}_inliers"], name=f"{base}_mul"))
        new_nodes.append(helper.make_node("Gather", [tensor, f"{base}_index"], [f"{base}_x"], axis=-1,
                                          name=f"{base}_gather"))
        for node in nodes:
            w = numpy_helper.to_array(initializers[node.input[1]])
            side = w[outliers]
            w = w.copy()
            w[outliers] = 0
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
            model.graph.initializer.append(numpy_helper.from_array(side, f"{node.name}_outlier_w"))
            output = node.output[0]
            node.input[0], node.output[0] = f"{base}_inliers", f"{output}_inliers"
            name = f"{node.name}_outlier_matmul"
            new_nodes.append(helper.make_node("MatMul", [f"{base}_x", f"{node.name}_outlier_w"], [f"{output}_outliers"],
                                              name=name))
            new_nodes.append(helper.make_node("Add", [f"{output}_inliers", f"{output}_outliers"], [output],
                                              name=f"{node.name}_outlier_add"))
            fp32_nodes.append(name)
    model.graph.node.extend(new_nodes)
    return fp32_nodes


def _per_token_scales(model, groups: dict[str, list]) -> None:
    """x W = m * ((x / m) W) with m = max |x| per token: the per-tensor int8 scale of x / m then
    fits every token alike (the special tokens run several times larger than the rest)."""
    from onnx import helper, numpy_helper

    new_nodes = []
    model.graph.initializer.append(numpy_helper.from_array(np.array(1e-6, np.float32), "per_token_eps"))
    for tensor, nodes in groups.items():
        base = f"{tensor}_per_token"
        new_nodes += [
            helper.make_node("Abs", [tensor], [f"{base}_abs"], name=f"{base}_abs"),
            helper.make_node("ReduceMax", [f"{base}_abs"], [f"{base}_max0"], axes=[-1], keepdims=1, name=f"{base}_max0"),
            helper.make_node("Max", [f"{base}_max0", "per_token_eps"], [f"{base}_max"], name=f"{base}_max"),
            helper.make_node("Div", [tensor, f"{base}_max"], [f"{base}_x"], name=f"{base}_div"),
        ]
        for node in nodes:
            output = node.output[0]
            node.input[0], node.output[0] = f"{base}_x", f"{output}_per_token"
            new_nodes.append(helper.make_node("Mul", [f"{output}_per_token", f"{base}_max"], [output],
                                              name=f"{node.name}_per_token_mul"))
    model.graph.node.extend(new_nodes)


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
) -> dict[str, str]:
    """Write model.onnx (int8 unless quantize=False) and tokenizer.json into out_folder.

    coef (n_labels, dim) and intercept (n_labels,) are the head trained on `encode()` output,
    temperature the calibrated one. keep_fp32 also keeps model.fp32.onnx (for parity checks);
    optimize runs onnxruntime's transformer fusions on BERT-like encoders before quantising; layers
    keeps only the encoder's first layers, as the model was trained with (EncoderSpec.layers);
    int8 is "dynamic" or "blockwise" (see _quantize); for dynamic, calibration (preprocessed texts,
    never the holdout) picks the outlier_channels channels per MatMul input kept in fp32.
    Returns the files for router.json: {"model": "model.onnx", "tokenizer": "tokenizer.json"}.
    """
    import torch

    coef, intercept = _head(coef, intercept, temperature)
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    model = _load_sentence_transformer(encoder_folder, max_length, layers)
    transformer, modes, normalize = _readout(model, encoder_folder)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else coef.shape[1]
    if coef.shape[1] != dim:
        raise ValueError(
            f"head: coef has {coef.shape[1]} columns but {encoder_folder} embeds to {dim}: "
            "the head was trained on another encoder; retrain it with this one."
        )
    graph = _router_graph(transformer, modes, normalize, coef, intercept, temperature)
    _save_tokenizer(transformer, out / TOKENIZER_FILE, max_length)
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        fp32 = Path(scratch) / FP32_FILE
        shutil.copyfile(out / TOKENIZER_FILE, Path(scratch) / TOKENIZER_FILE)
        with torch.no_grad():
            _export(graph, transformer.tokenizer, fp32)
        if optimize:
            _optimize(fp32, transformer.auto_model.config)
        if quantize:
            _quantize(fp32, out / MODEL_FILE, int8, calibration, outlier_channels)
        else:
            shutil.copyfile(fp32, out / MODEL_FILE)
        if keep_fp32:
            shutil.copyfile(fp32, out / FP32_FILE)
        else:  # a stale fp32 file from an earlier run would not match this model.onnx
            (out / FP32_FILE).unlink(missing_ok=True)
    return {"model": MODEL_FILE, "tokenizer": TOKENIZER_FILE}


# ---------------------------------------------------------------- running and comparing


def onnx_session(model: str | Path | bytes, threads: int = 1):
    """An onnxruntime CPU session (from a path or serialised bytes) with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def _tokenizer(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def _feeds(tokenizer, texts: list[str], inputs: set[str], batch_size: int):
    """(row indices, onnxruntime feed) per batch. Batches hold texts of similar lengths: less
    padding to compute, and int8's per-batch activation scales then see batches closer to the
    single queries served."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        encodings = tokenizer.encode_batch([texts[i] for i in rows])
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        yield rows, {name: value for name, value in feed.items() if name in inputs}


def onnx_probs(
    folder_or_model_path: str | Path, texts: list[str], threads: int = 1, batch_size: int = 64
) -> np.ndarray:
    """Probabilities (n_texts, n_labels) from a router's ONNX model on already-preprocessed texts.

    A folder means its model.onnx; a .onnx file is run with the tokenizer.json beside it."""
    path = Path(folder_or_model_path)
    model_path = path / MODEL_FILE if path.is_dir() else path
    tokenizer = _tokenizer(model_path.parent / TOKENIZER_FILE)
    session = onnx_session(model_path, threads)
    probs = None
    for rows, feed in _feeds(tokenizer, texts, {i.name for i in session.get_inputs()}, batch_size):
        out = session.run(["probs"], feed)[0]
        if probs is None:
            probs = np.empty((len(texts), out.shape[1]), np.float32)
        probs[rows] = out
    if probs is None:
        n_labels = session.get_outputs()[0].shape[1]
        return np.zeros((0, n_labels if isinstance(n_labels, int) else 0), np.float32)
    return probs


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


def parity(reference: np.ndarray, candidate: np.ndarray, confident: float = 0.5) -> dict[str, float]:
    """How closely candidate probabilities follow the reference, row by row.

    agreement: share of rows with the same top label; max_abs_dp / mean_abs_dp: over all cells;
    confident_agreement: agreement on the rows where the reference's top probability is at least
    `confident` (the near-ties a router defers anyway are where quantisation flips labels)."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"parity: reference {reference.shape} and candidate {candidate.shape} differ in shape")
    if len(reference) == 0:
        return {"agreement": 1.0, "max_abs_dp": 0.0, "mean_abs_dp": 0.0, "confident_agreement": 1.0, "n": 0}
    same = reference.argmax(axis=1) == candidate.argmax(axis=1)
    sure = reference.max(axis=1) >= confident
    dp = np.abs(reference - candidate)
    return {
        "agreement": float(same.mean()),
        "max_abs_dp": float(dp.max()),
        "mean_abs_dp": float(dp.mean()),
        "confident_agreement": float(same[sure].mean()) if sure.any() else 1.0,
        "n": int(len(reference)),
    }


def check_parity(
    report: dict, min_agreement: float, where: str = "export_onnx.min_agreement", what: str = "int8 router"
) -> None:
    """Raise ParityError when the exported router's top-label agreement is below the floor.

    `where` names the setting that holds the floor (shown to the user), `what` the candidate."""
    if report["agreement"] >= min_agreement:
        return
    rows = f" ({round(report['agreement'] * report['n'])} of {report['n']} rows)" if "n" in report else ""
    confident = (
        f", {report['confident_agreement']:.1%} where the trained model's top probability is at least 0.5"
        if "confident_agreement" in report
        else ""
    )
    raise ParityError(
        f"{what} agrees with the trained model on {report['agreement']:.1%} of the holdout{rows}, below the floor "
        f"{min_agreement:.1%} ({where}){confident}; max |dp| {report['max_abs_dp']:.4f}, mean |dp| "
        f"{report['mean_abs_dp']:.5f}. What to try: export with quantize=False and compare again; if fp32 "
        "agrees, the loss is int8's (ship fp32, about 3x slower, or lower the floor knowingly when the "
        "disagreements are near-ties); if fp32 disagrees too, the head, temperature, max_length or encoder "
        "given to the export is not the one the model was trained with."
    )
