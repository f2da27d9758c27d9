"""Which local MiniLM runs: the ONNX Runtime graph, or the numpy model where ONNX Runtime is missing."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import platformdirs

from server.retrieval.minilm import MiniLMEncoder

log = logging.getLogger(__name__)

# onnx-int8: int8 queries, fp32 documents (the index stays the fp32 model's); onnx: fp32 both.
Runtime = Literal["onnx-int8", "onnx", "numpy"]


class SentenceEncoder(Protocol):
    """A synchronous sentence encoder: unit-length float32 rows, in input order."""

    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]: ...


def default_cache_dir() -> Path:
    """Where built graphs go when no DATA_DIR is given: the default DATA_DIR's `models/`."""
    return platformdirs.user_data_path("textbook-chat") / "models"


def all_cores() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    return len(os.sched_getaffinity(0))


def int8_is_safe_here() -> bool:
    """Whether ONNX Runtime's int8 kernels are exact here: on x86 they need VNNI."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return True  # ARM's int8 dot products do not saturate
    try:
        flags = Path("/proc/cpuinfo").read_text()  # one flag: not worth a cpuinfo dependency
    except OSError:
        return False
    # Without VNNI, u8 x s8 products go through vpmaddubsw, whose int16 sums can saturate
    # (ONNX Runtime's quantization notes); quality was measured with VNNI only.
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return True
    log.info("no VNNI on this CPU: query embeddings stay fp32")
    return False


def load_encoder(
    runtime: Runtime,
    *,
    purpose: Literal["queries", "documents"],
    model_dir: Path | None = None,
    cache_dir: Path | None = None,
    threads: int = 1,
) -> SentenceEncoder:
    """The encoder for `runtime`; numpy when ONNX Runtime cannot be imported here."""
    if runtime != "numpy":
        try:
            from server.retrieval.onnx_encoder import OnnxEncoder
        except ImportError as exc:
            # onnxruntime has wheels for fewer platforms than numpy (no musl, no 32-bit, new
            # Pythons late): the numpy model gives the same vectors, only slower.
            log.warning("onnxruntime unavailable (%s): embedding with the numpy model", exc)
        else:
            int8 = runtime == "onnx-int8" and purpose == "queries" and int8_is_safe_here()
            return OnnxEncoder(
                cache_dir if cache_dir is not None else default_cache_dir(),
                model_dir=model_dir,
                precision="int8" if int8 else "fp32",
                threads=threads,
            )
    return MiniLMEncoder(model_dir)
