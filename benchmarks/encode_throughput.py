"""Corpus-encoding throughput of the pipeline's encoder against the bare model, on a GPU.

- pretokenized: what the `encode` stage runs with a ``tokens`` input: SciFact's documents (or ``--corpus``'s)
  repeated to ``--docs`` texts (so the lengths follow the corpus's) as a tokens Parquet file (the `tokenize` stage's format, written from one
  tokenization of the distinct documents; the stage's own speed is timed apart on ``--tokenize-docs`` texts), then
  `Encoder.encode_tokens` over its chunks as the stage runs it: bf16 weights (`Encoder.for_inference`), packed
  batches (no padding; flash variable-length attention), pooling + normalisation;
- pipeline: the same tokenizing on the fly (`Encoder.encode_counted`, the `encode` stage without ``tokens``);
- bare: `transformers.AutoModel` with bf16 weights on full batches of ``--max-length`` random tokens (no tokeniser,
  no padding, no pooling): the ceiling.

Diagnostics: ``agreement`` (cosines between the stages' embeddings and padded batches' or float32 weights'),
``pretokenized_fp32_weights`` (float32 weights under bf16 autocast, as training runs the encoder),
``pretokenized_padded`` (length-sorted padded batches: the path of models that `stages.ml.packed` does not know),
``bare_corpus_lengths`` (the bare model on the corpus's lengths in sorted padded batches, inputs made ahead) and
``profile`` (torch.profiler's busiest kernels in the stages' encoding).

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
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import stages.ml.packed
from stages.ml.models import TOKENIZE_CHUNK, document_texts, load_encoder, resolve_model
from stages.core.tables import iter_token_chunks
from stages.tokenize import write_tokens

SCIFACT = Path(__file__).resolve().parent.parent / "resources" / "scifact" / "corpus.jsonl.gz"
MATMUL_PEAK, SPEC_PEAK = 798e12, 989e12
CORPUS = SCIFACT  # --corpus
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


def bare_corpus_lengths(model_path: str, batch_size: int, max_length: int, docs: int) -> dict:
    """The bare bf16 model on the corpus's token lengths: length-sorted batches cut to their longest, with a padding
    mask, every input made on the GPU before the clock starts. What the pipeline could reach on this corpus."""
    from transformers import AutoModel

    from stages.ml.models import load_tokenizer, token_chunk

    model = AutoModel.from_pretrained(model_path, dtype=torch.bfloat16).cuda().eval()
    _, sample = token_chunk(load_tokenizer(model_path), corpus_texts(0)[:100_000], max_length)
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


def corpus_texts(docs: int, corpus: Path | None = None) -> list[str]:
    """The corpus's documents (default SciFact's; ``--corpus``: a BEIR corpus.jsonl[.gz] or an MS MARCO
    collection.tsv, e.g. `benchmarks/msmarco_synthetic.py`'s passages) repeated to ``docs`` texts; 0: each once."""
    corpus = corpus or CORPUS
    if corpus.suffix == ".tsv":
        table = pd.read_csv(corpus, sep="\t", header=None, names=["_id", "text"], dtype=str, quoting=3)
        texts = table["text"].fillna("").tolist()
    else:
        texts = document_texts(pd.read_json(corpus, lines=True, dtype={"_id": str}))
    return (texts * (docs // len(texts) + 1))[:docs] if docs else texts


def load(model_path: str, weights: str = "bf16"):
    """The pipeline's encoder on the GPU and the autocast to run it with: ``weights`` 'bf16' is what the stages run
    (`Encoder.for_inference`: bf16 weights, autocast off); 'fp32' keeps float32 weights under bf16 autocast."""
    encoder = load_encoder(model_path, pooling="mean", normalize=True).to(DEVICE)
    return (encoder, encoder.for_inference("bf16")) if weights == "bf16" else (encoder, "bf16")


def tokenize(model_path: str, texts: list[str], max_length: int, tokens: Path) -> dict:
    """The `tokenize` stage's work on ``texts``, timed."""
    encoder, began = load_encoder(model_path), time.perf_counter()
    count = write_tokens(encoder.tokenizer, [str(i) for i in range(len(texts))], texts, max_length, tokens)
    seconds = time.perf_counter() - began
    return {"docs": len(texts), "seconds": seconds, "tokens_per_s": count / seconds, "docs_per_s": len(texts) / seconds}


def repeated_tokens(model_path: str, docs: int, max_length: int, tokens: Path) -> None:
    """The tokens file of the corpus repeated to ``docs`` texts, written from one tokenization of its distinct
    documents (the same ids as tokenizing every copy, without the wait)."""
    from stages.ml.models import token_chunk
    from stages.core.tables import TOKENS_SCHEMA, token_rows
    import pyarrow.parquet as pq

    distinct = corpus_texts(0)[:docs]
    ids, lengths = token_chunk(load_encoder(model_path).tokenizer, distinct, max_length)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    with pq.ParquetWriter(tokens, TOKENS_SCHEMA, compression="zstd") as writer:
        for start in range(0, docs, len(distinct)):
            count = min(len(distinct), docs - start)
            rows = token_rows([str(start + i) for i in range(count)], ids[: offsets[count]], lengths[:count])
            writer.write_table(rows)


def pipeline(
    model_path: str,
    texts: list[str],
    batch_size: int,
    max_length: int,
    tokens: Path | None = None,
    weights: str = "bf16",
    padded: bool = False,
) -> dict:
    """`Encoder.encode_tokens` over the tokens file's chunks (the `encode` stage with a ``tokens`` input), or
    `Encoder.encode_counted` tokenizing on the fly when ``tokens`` is None. ``padded``: length-sorted padded batches
    instead of packed ones (the path for models that `stages.ml.packed` does not know)."""
    encoder, autocast = load(model_path, weights)
    options = {"batch_size": batch_size, "autocast": autocast}
    with packing_switched(not padded):
        encoder.encode(texts[:4096], max_length, progress=False, **options)  # warm-up
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        began = synchronize_time()
        if tokens is not None:
            chunks = iter_token_chunks(tokens, 0, len(texts), TOKENIZE_CHUNK)
            _, lengths = encoder.encode_tokens(chunks, len(texts), desc="pretokenized encode", **options)
        else:
            _, lengths = encoder.encode_counted(texts, max_length, desc="pipeline encode", **options)
        seconds = synchronize_time() - began
    total = flops(encoder.model.config, non_embedding_parameters(encoder.model), lengths)
    return {
        "docs": len(texts),
        "docs_per_s": len(texts) / seconds,
        "tokens_per_s": lengths.sum() / seconds,
        "mean_tokens_per_doc": float(lengths.mean()),
        "tflops": total / seconds / 1e12,
        "mfu_matmul_peak": total / seconds / MATMUL_PEAK,
        "mfu_spec": total / seconds / SPEC_PEAK,
        "seconds": seconds,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None,
    }


@contextmanager
def packing_switched(on: bool):
    if on:
        yield
        return
    original = stages.ml.packed.packing_pays
    stages.ml.packed.packing_pays = lambda model, dtype: False
    try:
        yield
    finally:
        stages.ml.packed.packing_pays = original


def agreement(model_path: str, texts: list[str], batch_size: int, max_length: int) -> dict:
    """Cosines between embeddings of the same texts: packed vs padded batches (both bf16 weights), and the stages'
    bf16 weights vs float32 weights under bf16 autocast (both packed)."""
    runs = {}
    for name, weights, packed in (("packed", "bf16", True), ("padded", "bf16", False), ("fp32", "fp32", True)):
        encoder, autocast = load(model_path, weights)
        with packing_switched(packed):
            runs[name] = encoder.encode(texts, max_length, batch_size=batch_size, autocast=autocast, progress=False)
    result = {"docs": len(texts)}
    for name in ("padded", "fp32"):
        cosine = (runs["packed"] * runs[name]).sum(1)  # unit vectors
        result[f"packed_bf16_vs_{name}"] = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
    return result


def profile(model_path: str, texts: list[str], batch_size: int, max_length: int, tokens: Path) -> dict:
    """The packed pre-tokenized encoding of ``texts`` (the first rows of the tokens file) under torch.profiler:
    its busiest kernels and operators, to show where the time goes."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    encoder, autocast = load(model_path)

    def encode() -> None:
        chunks = iter_token_chunks(tokens, 0, len(texts), TOKENIZE_CHUNK)
        encoder.encode_tokens(chunks, len(texts), batch_size, autocast=autocast, progress=False)

    encode()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with torch_profile(activities=activities) as trace:
        encode()
        synchronize_time()
    sort = "cuda_time_total" if DEVICE == "cuda" else "cpu_time_total"
    table = trace.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60)
    return {"docs": len(texts), "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--bare-batches", type=int, default=200)
    parser.add_argument("--tokenize-docs", type=int, default=100_000, help="texts the tokenize timing runs on")
    parser.add_argument("--skip", nargs="*", default=[], help="runs to leave out, by name (e.g. pipeline)")
    parser.add_argument("--corpus", type=Path, default=SCIFACT, help="BEIR corpus.jsonl[.gz] or MS MARCO collection.tsv")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    global CORPUS
    CORPUS = args.corpus
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    model, texts = resolve_model(args.model), corpus_texts(args.docs)
    common = (args.batch_size, args.max_length)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as folder:
        tokens = Path(folder) / "tokens.parquet"
        runs = {
            "bare": lambda: bare(model, args.batch_size, args.max_length, args.bare_batches),
            "agreement": lambda: agreement(model, texts[:16384], *common),
            "tokenize": lambda: tokenize(model, texts[: args.tokenize_docs], args.max_length, Path(folder) / "t"),
            "tokens": lambda: repeated_tokens(model, args.docs, args.max_length, tokens) or {"docs": args.docs},
            "pretokenized": lambda: pipeline(model, texts, *common, tokens=tokens),
            "pretokenized_fp32_weights": lambda: pipeline(model, texts, *common, tokens=tokens, weights="fp32"),
            "pretokenized_padded": lambda: pipeline(model, texts, *common, tokens=tokens, padded=True),
            "bare_corpus_lengths": lambda: bare_corpus_lengths(model, args.batch_size, args.max_length, args.docs),
            "profile": lambda: profile(model, texts[:32768], *common, tokens=tokens),
            "pipeline": lambda: pipeline(model, texts, *common),
        }
        runs = {name: run for name, run in runs.items() if name not in args.skip}
        for name, run in runs.items():  # the result so far is written after each, so a time limit keeps what finished
            result[name] = run()
            if "tokens_per_s" in result[name] and name not in ("bare", "tokenize") and "bare" in result:
                result[f"{name}_vs_bare_tokens"] = result[name]["tokens_per_s"] / result["bare"]["tokens_per_s"]
            text = json.dumps(result, indent=2, default=float)
            if args.out:
                args.out.write_text(text + "\n")
            print(f"{name}: {json.dumps(result[name], default=float)}", flush=True)
    print(text)


if __name__ == "__main__":
    main()
