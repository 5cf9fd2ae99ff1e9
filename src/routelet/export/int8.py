"""int8 for the exported router graph: every encoder MatMul gets int8 weights; the head stays fp32
(tiny, and its error lands directly on the probabilities). Measured in routelet.export.onnx's
docstring.

    quantize(fp32_path, int8_path, "dynamic", calibration_texts, outlier_channels=4)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routelet.serving.onnx_model import OnnxModel


def quantize(source: Path, target: Path, int8: str, calibration: list[str] | None, outlier_channels: int) -> None:
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

    fp32_nodes = _rewrite_for_int8(model, source.parent / "tokenizer.json", calibration, outlier_channels, set(head))
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
    runner = OnnxModel(probe.SerializeToString(), tokenizer_path)
    maxima = {name: None for name in tensors}
    for _, feed in runner.feeds(texts):
        real = feed["attention_mask"].astype(bool)
        for name, value in zip(tensors, runner.session.run(tensors, feed)):
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
