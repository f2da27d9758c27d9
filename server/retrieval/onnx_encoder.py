"""all-MiniLM-L6-v2 through ONNX Runtime: the graph `onnx_graph` builds from the packaged weights."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from server.retrieval.minilm import default_model_dir, padded_batches
from server.retrieval.onnx_graph import Precision, cached_model

F32 = npt.NDArray[np.float32]


class OnnxEncoder:
    """Sentence embeddings from one ONNX Runtime session; the same contract as MiniLMEncoder."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        model_dir: Path | None = None,
        precision: Precision = "fp32",
        threads: int = 1,
    ) -> None:
        model_dir = model_dir if model_dir is not None else default_model_dir()
        self.precision: Precision = precision
        self.threads = threads
        self.dim: int = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.max_tokens: int = int(st_config["max_seq_length"])
        # tokenizer.json ships with fixed padding to 128 and truncation at 128: replace both.
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_tokens)
        self.model_path = cached_model(model_dir, cache_dir, precision)

        options = ort.SessionOptions()
        # 1 for queries in a serving process (the event loop owns the other core), every core
        # for ingest.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # its warnings about our graph are not the reader's business
        if threads > 1:
            # Idle pool threads would otherwise spin between batches, on the event loop's core
            # (a server ingests its book at start); spinning gained nothing measurable for
            # ingest here (book-b: 15.2 chunks/s spinning, 15.4 not).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(self.model_path), options, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> F32:
        """Unit-length float32 embeddings, shape (len(texts), dim), in input order."""
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return vectors
        if len(texts) == 1:  # a lone query: no batch bookkeeping
            ids = np.array([self._tokenizer.encode(texts[0]).ids], dtype=np.int64)
            vectors[:] = self._run(ids, np.ones_like(ids))
            return vectors
        token_ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        for rows, ids, mask in padded_batches(token_ids, batch_size):
            vectors[rows] = self._run(ids, mask.astype(np.int64))
        return vectors

    def _run(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> F32:
        outputs = self._session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
        result: F32 = np.asarray(outputs[0], dtype=np.float32)
        return result
