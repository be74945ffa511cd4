"""Corpus-encoding throughput of the pipeline's encoder against the bare model, on a GPU.

- pipeline: `stages.models.Encoder.encode_counted` (the `encode` stage without a ``tokens`` input: tokenisation in a
  worker thread, length-sorted dynamic-padding batches, bf16 autocast, pooling + normalisation) over SciFact's
  documents repeated to ``--docs`` texts, so the lengths follow SciFact's distribution;
- pretokenized: what the `encode` stage runs with a ``tokens`` input: the same texts tokenized once into a tokens
  Parquet file (the `tokenize` stage's format; its time reported apart), then `Encoder.encode_tokens` over its chunks;
- bare: `transformers.AutoModel` with bf16 weights on full batches of ``--max-length`` random tokens (no tokeniser,
  no padding, no pooling): the ceiling.

Two diagnostics split the gap between them: ``bare_scifact_lengths`` (the bare model on SciFact's lengths, sorted
batches with a padding mask, inputs made ahead: the data's own cost) and ``pretokenized_bf16_weights`` (the
pipeline with the encoder cast to bf16 instead of fp32 weights under autocast).

Tokens/s count non-padding tokens only. FLOPs per text: 2 x non-embedding parameters x tokens + attention
(4 x layers x hidden x tokens^2: QK^T and AV). MFU is against 798 TFLOP/s (a large bf16 matmul on the H100) and the
989 TFLOP/s spec. Prints one JSON object (and writes it to ``--out``).

    python benchmarks/encode_throughput.py --model PATH [--docs 1000000] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stages.models import TOKENIZE_CHUNK, document_texts, load_encoder, resolve_model
from stages.tables import iter_token_chunks
from stages.tokenize import write_tokens

SCIFACT = Path(__file__).resolve().parent.parent / "resources" / "scifact" / "corpus.jsonl.gz"
MATMUL_PEAK, SPEC_PEAK = 798e12, 989e12
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # main() insists on CUDA; the functions also run on CPU


def flops(model_config, non_embedding_params: int, lengths: np.ndarray) -> float:
    layers, hidden = model_config.num_hidden_layers, model_config.hidden_size
    lengths = lengths.astype(np.float64)
    return float(2 * non_embedding_params * lengths.sum() + 4 * layers * hidden * (lengths**2).sum())


def non_embedding_parameters(model: torch.nn.Module) -> int:
    embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    return sum(p.numel() for p in model.parameters()) - embedding


def synchronize_time() -> float:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def bare(model_path: str, batch_size: int, length: int, batches: int) -> dict:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_path, dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(1000, 20000, (batch_size, length), device="cuda")
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for _ in range(5):
            model(input_ids=ids, attention_mask=mask)
        began = synchronize_time()
        for _ in range(batches):
            model(input_ids=ids, attention_mask=mask)
        seconds = synchronize_time() - began
    lengths = np.full(batch_size * batches, length)
    total = flops(model.config, non_embedding_parameters(model), lengths)
    return {
        "tokens_per_s": lengths.sum() / seconds,
        "tflops": total / seconds / 1e12,
        "mfu_matmul_peak": total / seconds / MATMUL_PEAK,
        "mfu_spec": total / seconds / SPEC_PEAK,
        "batch": [batch_size, length],
        "seconds": seconds,
    }


def bare_scifact_lengths(model_path: str, batch_size: int, max_length: int, docs: int) -> dict:
    """The bare bf16 model on SciFact's token lengths: length-sorted batches cut to their longest, with a padding
    mask, every input made on the GPU before the clock starts. What the pipeline could reach on this corpus."""
    from transformers import AutoModel

    from stages.models import load_tokenizer, token_chunk

    model = AutoModel.from_pretrained(model_path, dtype=torch.bfloat16).cuda().eval()
    _, sample = token_chunk(load_tokenizer(model_path), scifact_texts(5183), max_length)
    lengths = np.sort(np.resize(sample, docs))[::-1]
    batches = []
    for start in range(0, docs, batch_size):
        rows = torch.as_tensor(lengths[start : start + batch_size].copy(), device="cuda")
        longest = int(rows[0])
        mask = (torch.arange(longest, device="cuda") < rows[:, None]).long()
        batches.append((torch.randint(1000, 20000, (len(rows), longest), device="cuda"), mask))
    with torch.inference_mode():
        for ids, mask in batches[:5]:
            model(input_ids=ids, attention_mask=mask)
        began = synchronize_time()
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
        seconds = synchronize_time() - began
    total = flops(model.config, non_embedding_parameters(model), lengths)
    return {"tokens_per_s": lengths.sum() / seconds, "tflops": total / seconds / 1e12, "docs": docs, "seconds": seconds}


def scifact_texts(docs: int) -> list[str]:
    corpus = pd.read_json(SCIFACT, lines=True, dtype={"_id": str})
    texts = document_texts(corpus)
    return (texts * (docs // len(texts) + 1))[:docs]


def pipeline(
    model_path: str, docs: int, batch_size: int, max_length: int, pretokenized: bool = False, bf16_weights: bool = False
) -> dict:
    """``bf16_weights``: the encoder cast to bf16 and autocast off (as the bare model runs), instead of fp32 weights
    under bf16 autocast."""
    texts = scifact_texts(docs)
    encoder = load_encoder(model_path, pooling="mean", normalize=True).to(DEVICE)
    autocast = "auto"
    if bf16_weights:
        encoder, autocast = encoder.to(torch.bfloat16), "none"
    encoder.encode(texts[:4096], max_length, batch_size=batch_size, autocast=autocast, progress=False)  # warm-up
    extra = {}
    with tempfile.TemporaryDirectory() as folder:
        if pretokenized:
            tokens, began = Path(folder) / "tokens.parquet", time.perf_counter()
            write_tokens(encoder.tokenizer, [str(i) for i in range(len(texts))], texts, max_length, tokens)
            extra["tokenize_seconds"] = time.perf_counter() - began
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        began = synchronize_time()
        if pretokenized:
            chunks = iter_token_chunks(tokens, 0, len(texts), TOKENIZE_CHUNK)
            _, lengths = encoder.encode_tokens(
                chunks, len(texts), batch_size=batch_size, autocast=autocast, desc="pretokenized encode"
            )
        else:
            _, lengths = encoder.encode_counted(texts, max_length, batch_size=batch_size, desc="pipeline encode")
        seconds = synchronize_time() - began
    total = flops(encoder.model.config, non_embedding_parameters(encoder.model), lengths)
    return {
        "docs": docs,
        "docs_per_s": docs / seconds,
        "tokens_per_s": lengths.sum() / seconds,
        "mean_tokens_per_doc": float(lengths.mean()),
        "tflops": total / seconds / 1e12,
        "mfu_matmul_peak": total / seconds / MATMUL_PEAK,
        "mfu_spec": total / seconds / SPEC_PEAK,
        "seconds": seconds,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--bare-batches", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    model = resolve_model(args.model)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    runs = {
        "bare": lambda: bare(model, args.batch_size, args.max_length, args.bare_batches),
        "pretokenized": lambda: pipeline(model, args.docs, args.batch_size, args.max_length, pretokenized=True),
        "bare_scifact_lengths": lambda: bare_scifact_lengths(model, args.batch_size, args.max_length, args.docs),
        "pretokenized_bf16_weights": lambda: pipeline(
            model, args.docs, args.batch_size, args.max_length, pretokenized=True, bf16_weights=True
        ),
        "pipeline": lambda: pipeline(model, args.docs, args.batch_size, args.max_length),
    }
    for name, run in runs.items():  # the result so far is written after each, so a time limit keeps what finished
        result[name] = run()
        if name != "bare":
            result[f"{name}_vs_bare_tokens"] = result[name]["tokens_per_s"] / result["bare"]["tokens_per_s"]
        text = json.dumps(result, indent=2, default=float)
        if args.out:
            args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
