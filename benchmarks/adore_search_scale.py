"""ADORE's search at MS MARCO passage scale on a GPU: how long one training step's retrieval takes, and its share.

- flat: exact search over an (N, dim) float16 matrix resident on the GPU (`FlatTorchSearcher`: chunked matmul +
  top-k), for a batch of ``--queries`` queries at k = ``--k``;
- pq: `PQTorchSearcher` with only the (N, M) uint8 codes (and the small centroid table) resident: the Triton kernel,
  and the torch decode-and-matmul fallback for comparison;
- step: one ADORE step (`stages.train_adore.batch_loss`: encode the queries with gradient, search, score, loss, then
  backward and an AdamW step) with the bundled MiniLM over N synthetic documents of the model's dimension (384), flat
  and PQ; prints the search share of the step;
- ``--check``: on a small index trained with faiss (CPU), the torch PQ top-k against faiss's (float32: equal up to
  ties; float16: the overlap), with and without OPQ.

Codes, centroids, embeddings and queries are random (normal / uniform): search latency does not depend on their
values, and training faiss's PQ and encoding 8.8M vectors on CPU would take far longer than the measurement. Times are
medians over ``--repeats`` runs after warm-up, measured with CUDA events (search) or synchronised wall time (step).
Prints a table and one JSON object (also written to ``--out``).

    python benchmarks/adore_search_scale.py [--docs 8841823] [--model PATH] [--check] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from stages.core import settings
from stages.ml.search import FlatTorchSearcher, PQTorchSearcher

MS_MARCO_PASSAGES = 8_841_823


def cuda_ms(function, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        function()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


def gib(count: float) -> float:
    return round(count / 2**30, 3)


def random_matrix(rows: int, dim: int, generator: torch.Generator, block: int = 1 << 20) -> torch.Tensor:
    """Unit-norm float16 rows generated on the GPU block by block (no float32 copy of the whole)."""
    matrix = torch.empty((rows, dim), dtype=torch.float16, device="cuda")
    for start in range(0, rows, block):
        values = torch.randn((min(block, rows - start), dim), device="cuda", generator=generator)
        matrix[start : start + len(values)] = torch.nn.functional.normalize(values, dim=1).half()
    return matrix


def flat_searcher(matrix: torch.Tensor) -> FlatTorchSearcher:
    """A flat searcher over a matrix already on the GPU (the constructor would copy it)."""
    searcher = FlatTorchSearcher(torch.empty((0, matrix.shape[1])), device="cuda")
    searcher.matrix = matrix
    return searcher


def pq_searcher(rows: int, dim: int, m: int, generator: torch.Generator, **options) -> PQTorchSearcher:
    codes = torch.randint(0, 256, (rows, m), dtype=torch.uint8, device="cuda", generator=generator)
    centroids = torch.randn((m, 256, dim // m), device="cuda", generator=generator) / np.sqrt(dim)
    return PQTorchSearcher(codes, centroids, device="cuda", **options)


def search_latency(args: argparse.Namespace, generator: torch.Generator) -> dict:
    queries = torch.nn.functional.normalize(torch.randn((args.queries, args.dim), device="cuda", generator=generator))
    results = {}
    torch.cuda.reset_peak_memory_stats()
    matrix = random_matrix(args.docs, args.dim, generator)
    flat = flat_searcher(matrix)
    results["flat_fp16"] = {
        "ms": round(cuda_ms(lambda: flat.topk(queries, args.k), args.repeats), 3),
        "resident_gib": gib(matrix.numel() * 2),
        "peak_gib": gib(torch.cuda.max_memory_allocated()),
    }
    del flat, matrix
    torch.cuda.empty_cache()
    for kernel in ("triton", "torch"):
        torch.cuda.reset_peak_memory_stats()
        searcher = pq_searcher(args.docs, args.dim, args.pq_m, generator, kernel=kernel)
        resident = searcher.codes.numel() + searcher.table.numel() * 2
        results[f"pq{args.pq_m}_{kernel}"] = {
            "ms": round(cuda_ms(lambda: searcher.topk(queries, args.k), args.repeats), 3),
            "resident_gib": gib(resident),
            "peak_gib": gib(torch.cuda.max_memory_allocated()),
        }
        del searcher
        torch.cuda.empty_cache()
    return results


def adore_steps(args: argparse.Namespace, generator: torch.Generator) -> dict:
    from stages.ml.models import load_encoder
    from stages.train_adore import AdoreParams, TrainingData, batch_loss
    from stages.ml.frozen_documents import FrozenDocuments

    encoder = load_encoder(args.model).cuda().train()
    dim = encoder.dim
    rng = np.random.default_rng(0)
    words = "what is the cause of high blood pressure in adults and how is it treated".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(6, 14))) for _ in range(args.queries)]
    data = TrainingData(
        query_texts=texts,
        positive_rows=[rng.choice(args.docs, size=1 + (i % 2), replace=False) for i in range(args.queries)],
        positive_gains=[np.ones(1 + (i % 2)) for i in range(args.queries)],
    )
    shape = {"top_k": args.k, "metric_cutoff": args.k, "query_max_length": 32, "batch_size": args.queries}
    params = settings.params(AdoreParams, "adore", "encoder", **shape, seed=42)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-7)
    device = torch.device("cuda")
    results = {}
    for name in ("flat", "pq"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if name == "flat":
            documents = FrozenDocuments(flat_searcher(random_matrix(args.docs, dim, generator)), "flat")
        else:
            documents = FrozenDocuments(pq_searcher(args.docs, dim, args.pq_m, generator), "reconstructed")
        rows = []
        for step in range(args.steps + 3):
            torch.cuda.synchronize()
            began = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, extras = batch_loss(encoder, data, params, list(range(args.queries)), documents, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize()
            if step >= 3:  # warm-up: autotuning, allocator, cuBLAS handles
                seconds = [float(extras[name]) for name in ("encode_seconds", "search_seconds")]
                rows.append((time.perf_counter() - began, *seconds))
        step_s, encode_s, search_s = np.median(np.array(rows), axis=0)
        results[f"adore_step_{name}"] = {
            "dim": dim,
            "step_ms": round(1e3 * step_s, 2),
            "encode_ms": round(1e3 * encode_s, 2),
            "search_ms": round(1e3 * search_s, 2),
            "loss_backward_ms": round(1e3 * (step_s - encode_s - search_s), 2),
            "search_share": round(float(search_s / step_s), 3),
            "peak_gib": gib(torch.cuda.max_memory_allocated()),
        }
        del documents
    return results


def check_against_faiss(docs: int, dim: int, m: int, opq: bool) -> dict:
    import faiss

    from stages.ml.search import faiss_search

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((docs, dim)).astype(np.float32)
    queries = rng.standard_normal((32, dim)).astype(np.float32)
    pq = faiss.IndexPQ(dim, m, 8, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexPreTransform(faiss.OPQMatrix(dim, m), pq) if opq else pq
    index.train(vectors[: 40 * 256])
    index.add(vectors)
    expected_scores, expected = faiss_search(index, queries, 200)
    result = {}
    for dtype in (torch.float32, torch.float16):
        searcher = PQTorchSearcher.from_faiss(index, dtype=dtype, chunk_size=docs // 3 + 1)
        scores, found = searcher.search(queries, 200)
        gaps = np.abs(expected_scores[:, :, None] - expected_scores[:, None, :]) + np.eye(200) * 1e9
        untied = gaps.min(axis=2) > 1e-4
        result[str(dtype).removeprefix("torch.")] = {
            "kernel": searcher.kernel,
            "ids_equal_where_untied": bool((found == expected)[untied].all()),
            "overlap": round(float(np.mean([len(set(a) & set(b)) / 200 for a, b in zip(found, expected)])), 5),
            "max_score_diff": float(np.abs(scores - expected_scores).max()),
        }
    ok = result["float32"]["ids_equal_where_untied"] and result["float32"]["max_score_diff"] < 1e-3
    return {"docs": docs, "dim": dim, "m": m, "opq": opq, "ok": bool(ok), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=MS_MARCO_PASSAGES)
    parser.add_argument("--dim", type=int, default=768, help="search benchmark dimension (RoBERTa-base: 768)")
    parser.add_argument("--pq-m", type=int, default=96)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10, help="ADORE steps timed (after 3 of warm-up)")
    parser.add_argument("--model", default="bundled", help="query encoder for the step (MiniLM folder)")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--check", action="store_true", help="also compare the torch PQ top-k with faiss's")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    generator = torch.Generator(device="cuda").manual_seed(0)
    report: dict = {
        "device": torch.cuda.get_device_name(),
        "docs": args.docs,
        "queries": args.queries,
        "k": args.k,
        "values": "random codes, centroids, embeddings and queries (latency does not depend on them)",
    }
    if args.check:
        report["check"] = [check_against_faiss(200_000, 768, 96, False), check_against_faiss(100_000, 128, 16, True)]
    report["search"] = search_latency(args, generator)
    if not args.skip_step:
        report.update(adore_steps(args, generator))
    print(f"{'what':<22}{'ms':>10}{'resident GiB':>14}{'peak GiB':>10}")
    for name, values in report["search"].items():
        print(f"{name:<22}{values['ms']:>10}{values['resident_gib']:>14}{values['peak_gib']:>10}")
    for name in ("adore_step_flat", "adore_step_pq"):
        if name in report:
            values = report[name]
            print(
                f"{name}: step {values['step_ms']} ms = encode {values['encode_ms']} + search {values['search_ms']}"
                f" + loss/backward/optimiser {values['loss_backward_ms']}; search share {values['search_share']:.1%}"
            )
    print(text := json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
