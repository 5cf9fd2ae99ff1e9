"""int8 for the exported router graph: every encoder MatMul gets int8 weights; the head stays fp32
(tiny, and its error lands directly on the probabilities). Measured in routelet.export.onnx's
docstring.

    quantize(fp32_path, int8_path, "dynamic", calibration_texts, outlier_channels=4)

Activation scales are fixed, never computed per batch, so a text's answer does not depend on its
batch. Measured with MiniLM-L6 + a 4-label head on 2,000 CLINC150 test texts, each alone against
in batches of 16: per-batch scales (onnxruntime's DynamicQuantizeLinear, and the head quantised by
mistake) moved probabilities by up to 0.024 and flipped 11 decisions; fixed scales 1.8e-7 and 0.
Against fp32 the fixed scales are also closer (mean |dp| 0.00245 against 0.00258, KL 0.000103
against 0.000111, argmax agreement 99.40% against 99.00%), for about the same CPU per text
(one thread: 2.02 against 2.07 ms alone, 1.86 against 1.77 ms in batches of 256).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from routelet.serving.onnx_model import OnnxModel

# Suffixes of MatMul inputs scaled per token, and the fixed uint8 (scale, zero point) each one takes:
# _SYMMETRIC tokens span [-1, 1] (divided by their max |x|), _SHIFTED ones [0, 1] (shifted by their
# min, divided by their range).
_SYMMETRIC, _SHIFTED = "_per_token_x", "_per_token_x01"
_STATIC = {_SHIFTED: (1 / 255, 0), _SYMMETRIC: (1 / 127, 128)}
_COLSUM = "_colsum"  # suffix of the column sums of a weight, for the per-token shift
# An input is shifted when, over the calibration tokens, the median of each token's smaller |extreme|
# over its larger one is below this. MiniLM on CLINC150: GELU outputs 0.04-0.09, the other inputs
# 0.28-0.84, and the export shifts exactly the 6 GELU outputs; the others keep the cheaper mapping.
_LOPSIDED = 0.25


def quantize(source: Path, target: Path, int8: str, calibration: list[str] | None, outlier_channels: int) -> None:
    """int8 weights for every encoder MatMul; the head stays fp32 (tiny, and its error lands directly
    on the probabilities). Measured in the module docstring.

    dynamic: weights int8 per output channel, activations int8 (MatMulInteger on VNNI). One
    activation scale per tensor would be decided by a few outliers: so with calibration texts the
    `outlier_channels` channels of largest |x| of each MatMul input leave the int8 product and are
    multiplied in fp32 beside it, and each token is scaled to span [-1, 1] (or shifted and scaled
    to span [0, 1], where calibration shows one-sided tokens) before the product and mapped back
    after, which makes the scale per token. The activation scale is then fixed
    (`_static_activation_scales`) rather than computed per batch by onnxruntime, so no row's answer
    depends on the other rows of its batch.
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

    fp32_nodes = _rewrite_for_int8(model, source.parent / "tokenizer.json", calibration, outlier_channels, set(head))
    # Only the MatMuls that read a per-token-scaled input: the head (a Gemm, which quantize_dynamic
    # renames to "<name>_MatMul", so excluding it by name missed it) and activation x activation
    # products stay fp32.
    per_token = [node.name for node in model.graph.node
                 if node.op_type == "MatMul" and node.input[0].endswith(tuple(_STATIC))]
    staged = source.with_name("rewritten.onnx")  # beside the source, in the build's scratch folder
    onnx.save(model, str(staged))
    # Shape inference stops at the fused (com.microsoft) attention ops: every tensor here is float.
    quantize_dynamic(str(staged), str(target), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], nodes_to_quantize=per_token,
                     nodes_to_exclude=sorted(fp32_nodes), extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    _static_activation_scales(target)


def _rewrite_for_int8(model, tokenizer_path: Path, calibration: list[str] | None, outlier_channels: int,
                      exclude: set[str]) -> set[str]:
    """Rewrite the fp32 graph in place so that per-tensor int8 fits it (outlier split when there are
    calibration texts, then per-token scales, shifted where calibration shows lopsided tokens); the
    result is the same function in fp32. Returns the MatMuls to leave in fp32: `exclude` and the
    outlier side products."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    fp32_nodes = set(exclude)
    if calibration and outlier_channels > 0:
        groups = _weight_matmuls(model, exclude=fp32_nodes)
        maxima = _activation_maxima(model, tokenizer_path, list(groups), calibration)
        fp32_nodes.update(_split_outliers(model, groups, maxima, outlier_channels))
    groups = _weight_matmuls(model, exclude=fp32_nodes)
    shifted = _lopsided(model, tokenizer_path, list(groups), calibration) if calibration else set()
    _per_token_scales(model, groups, shifted)
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


def _real_tokens(model, tokenizer_path: Path, tensors: list[str], texts: list[str]) -> Iterator[dict]:
    """Per chunk of `texts`, each named tensor of `model` at the real (unpadded) tokens: (tokens, channels)."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in tensors)
    runner = OnnxModel(probe.SerializeToString(), tokenizer_path)
    for _, feed in runner.feeds(texts):
        real = feed["attention_mask"].astype(bool)
        yield {name: value[real] for name, value in zip(tensors, runner.session.run(tensors, feed))}


def _activation_maxima(model, tokenizer_path: Path, tensors: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    """max |x| per channel of each named tensor of `model` over the real (unpadded) tokens of `texts`."""
    maxima = {name: None for name in tensors}
    for values in _real_tokens(model, tokenizer_path, tensors, texts):
        for name, value in values.items():
            top = np.abs(value).max(axis=0)
            maxima[name] = top if maxima[name] is None else np.maximum(maxima[name], top)
    return maxima


def _lopsided(model, tokenizer_path: Path, tensors: list[str], texts: list[str]) -> set[str]:
    """The tensors whose tokens mostly lie on one side of zero (see _LOPSIDED)."""
    ratios: dict[str, list] = {name: [] for name in tensors}
    for values in _real_tokens(model, tokenizer_path, tensors, texts):
        for name, value in values.items():
            low, high = np.abs(value.min(axis=1)), np.abs(value.max(axis=1))
            ratios[name].append(np.minimum(low, high) / np.maximum(np.maximum(low, high), 1e-12))
    return {name for name, parts in ratios.items() if parts and np.median(np.concatenate(parts)) < _LOPSIDED}


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


def _per_token_scales(model, groups: dict[str, list], shifted: set[str] = frozenset()) -> None:
    """Make every token of each MatMul input span a fixed range, so one fixed uint8 scale fits every
    token alike (the special tokens run several times larger than the rest):
      x W = m * ((x / m) W), m = max |x| of the token: it spans [-1, 1] (1 node per MatMul);
      x W = lo * colsum(W) + s * (x' W), x' = (x - lo) / s with lo the token's min and s its range:
        it spans [0, 1], all 256 levels, for the `shifted` inputs (GELU outputs are nearly all
        positive, where [-1, 1] would waste half of them; 3 nodes per MatMul)."""
    from onnx import helper, numpy_helper

    initializers = {w.name: w for w in model.graph.initializer}
    model.graph.initializer.append(numpy_helper.from_array(np.array(1e-6, np.float32), "per_token_eps"))
    new_nodes = []
    for tensor, nodes in groups.items():
        b = f"{tensor}_per_token"
        if tensor in shifted:
            x = f"{b}{_SHIFTED}"
            new_nodes += [
                helper.make_node("ReduceMax", [tensor], [f"{b}_hi"], axes=[-1], keepdims=1, name=f"{b}_hi"),
                helper.make_node("ReduceMin", [tensor], [f"{b}_lo"], axes=[-1], keepdims=1, name=f"{b}_lo"),
                helper.make_node("Sub", [f"{b}_hi", f"{b}_lo"], [f"{b}_span"], name=f"{b}_span"),
                helper.make_node("Max", [f"{b}_span", "per_token_eps"], [f"{b}_scale"], name=f"{b}_scale"),
                helper.make_node("Sub", [tensor, f"{b}_lo"], [f"{b}_shifted"], name=f"{b}_shifted"),
                helper.make_node("Div", [f"{b}_shifted", f"{b}_scale"], [x], name=f"{b}_div"),
            ]
        else:
            x = f"{b}{_SYMMETRIC}"
            new_nodes += [
                helper.make_node("Abs", [tensor], [f"{b}_abs"], name=f"{b}_abs"),
                helper.make_node("ReduceMax", [f"{b}_abs"], [f"{b}_max"], axes=[-1], keepdims=1, name=f"{b}_max"),
                helper.make_node("Max", [f"{b}_max", "per_token_eps"], [f"{b}_scale"], name=f"{b}_scale"),
                helper.make_node("Div", [tensor, f"{b}_scale"], [x], name=f"{b}_div"),
            ]
        for node in nodes:
            output = node.output[0]
            node.input[0], node.output[0] = x, f"{output}_per_token"
            new_nodes.append(helper.make_node("Mul", [f"{output}_per_token", f"{b}_scale"],
                                              [f"{output}_scaled" if tensor in shifted else output],
                                              name=f"{node.name}_per_token_mul"))
            if tensor in shifted:
                colsum = f"{node.input[1]}{_COLSUM}"
                weight = numpy_helper.to_array(initializers[node.input[1]])
                model.graph.initializer.append(numpy_helper.from_array(weight.sum(axis=0).astype(np.float32), colsum))
                new_nodes += [
                    helper.make_node("Mul", [f"{b}_lo", colsum], [f"{output}_shift"], name=f"{node.name}_shift"),
                    helper.make_node("Add", [f"{output}_scaled", f"{output}_shift"], [output],
                                     name=f"{node.name}_unshift"),
                ]
    model.graph.node.extend(new_nodes)


def _static_activation_scales(path: Path) -> None:
    """Replace each DynamicQuantizeLinear by a QuantizeLinear with a fixed scale, in place.

    DynamicQuantizeLinear takes one scale and zero point from the min and max of its whole input
    tensor, i.e. of every row and pad token of the batch: a text's answer moved with what else was
    in its batch (up to 0.134 in confidence on CLINC150's holdout, 0.012 on the tiny test model).
    Every quantised input here is per-token scaled to a fixed range (_STATIC), so each token is
    quantised on its own."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            continue
        suffix = next((s for s in _STATIC if node.input[0].endswith(s)), None)
        if suffix is None:
            raise ValueError(f"{path}: {node.name} quantises {node.input[0]!r}, which is not per-token scaled, "
                             "with a per-batch scale: answers would depend on the batch")
        quantized, scale, zero_point = node.output
        model.graph.initializer.extend([numpy_helper.from_array(np.array(_STATIC[suffix][0], np.float32), scale),
                                        numpy_helper.from_array(np.array(_STATIC[suffix][1], np.uint8), zero_point)])
        node.CopyFrom(helper.make_node("QuantizeLinear", [node.input[0], scale, zero_point], [quantized],
                                       name=f"{node.name}_static"))
    _quantized_colsums(model)
    onnx.save(model, str(path))


def _quantized_colsums(model) -> None:
    """Make each per-token shift lo * colsum(W) use the int8 weight's column sums, in place: the
    product then gives (x - lo) W_int8 + lo colsum(W_int8) = x W_int8 exactly, so the weights'
    rounding error stays that of x W_int8 (with fp32 sums it would grow with lo over every input
    channel: measured, mean |dp| to fp32 2.9x larger on MiniLM)."""
    from onnx import numpy_helper

    arrays = {w.name: w for w in model.graph.initializer}
    for name in [n for n in arrays if n.endswith(_COLSUM)]:
        weight = name.removesuffix(_COLSUM)
        if f"{weight}_quantized" not in arrays:
            continue  # left in fp32
        q = numpy_helper.to_array(arrays[f"{weight}_quantized"]).astype(np.float32)
        scale = numpy_helper.to_array(arrays[f"{weight}_scale"]).astype(np.float32)
        zero = numpy_helper.to_array(arrays[f"{weight}_zero_point"]).astype(np.float32)
        if scale.ndim == 1 and scale.shape[0] == q.shape[0] != q.shape[1]:  # per input row
            scale, zero = scale[:, None], zero[:, None]
        sums = ((q - zero) * scale).sum(axis=0).astype(np.float32)
        arrays[name].CopyFrom(numpy_helper.from_array(sums, name))
