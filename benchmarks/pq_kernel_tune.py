"""Tune and check the Triton PQ kernel (stages.pq_kernels) on a GPU: correctness against faiss on small indexes,
kernel tilings, top-k strategies and the flat searcher's chunk size at MS MARCO size. Prints JSON lines.

    python benchmarks/pq_kernel_tune.py [--docs 8841823] [--skip-check]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch


def emit(**values) -> None:
    print(json.dumps(values), flush=True)


def cuda_ms(function, repeats: int = 10, warmup: int = 2) -> float:
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


def check(dim: int, m: int, docs: int, opq: bool) -> None:
    import faiss

    from stages.search import PQTorchSearcher, faiss_search

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, dim))
    x = centres[rng.integers(0, 50, docs)] + 0.5 * rng.standard_normal((docs, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    queries = x[rng.integers(0, docs, 32)] + 0.1 * rng.standard_normal((32, dim)).astype(np.float32)
    pq = faiss.IndexPQ(dim, m, 8, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexPreTransform(faiss.OPQMatrix(dim, m), pq) if opq else pq
    began = time.perf_counter()
    index.train(x[:20000])
    index.add(x)
    expected_scores, expected = faiss_search(index, queries, 200)
    build = time.perf_counter() - began
    for kernel, dtype, gather_rows in [
        ("triton", torch.float32, True),
        ("triton", torch.float32, False),
        ("triton", torch.float16, True),
        ("torch", torch.float32, True),
        ("torch", torch.float16, True),
    ]:
        searcher = PQTorchSearcher.from_faiss(index, kernel=kernel, dtype=dtype, chunk_size=1 << 16)
        if not gather_rows:
            import stages.pq_kernels as kernels

            original = kernels.pq_scores
            kernels.pq_scores = lambda *a, **k: original(*a, gather_rows=False, **k)
        scores, indices = searcher.search(queries, 200)
        if not gather_rows:
            kernels.pq_scores = original
        overlap = np.mean([len(set(a) & set(b)) / 200 for a, b in zip(indices, expected)])
        emit(
            check=f"D{dim} M{m} N{docs} opq={opq}",
            kernel=kernel,
            dtype=str(dtype),
            gather_rows=gather_rows,
            ids_equal=float((indices == expected).mean()),
            overlap=round(float(overlap), 5),
            max_score_diff=float(np.abs(scores - expected_scores).max()),
            build_s=round(build, 1),
        )


def tune(docs: int) -> None:
    from stages.pq_kernels import pq_scores
    from stages.search import FlatTorchSearcher, PQTorchSearcher

    m, dsub, k = 96, 8, 200
    generator = torch.Generator(device="cuda").manual_seed(0)
    codes = torch.randint(0, 256, (docs, m), dtype=torch.uint8, device="cuda", generator=generator)
    table = torch.randn((m * 256, dsub), device="cuda", generator=generator).half()
    queries = torch.randn((32, m * dsub), device="cuda", generator=generator).half()
    out = torch.empty((32, docs), dtype=torch.float32, device="cuda")
    best = None
    configs = list(itertools.product((True,), (64, 128, 256), (4, 8, 16), (4, 8)))
    configs += [(False, 128, 8, 4), (False, 128, 16, 4)]
    for gather_rows, block_n, block_m, warps in configs:
        try:
            ms = cuda_ms(
                lambda: pq_scores(
                    codes, table, queries, 256, out=out, block_n=block_n, block_m=block_m, gather_rows=gather_rows,
                    num_warps=warps,
                ),
                repeats=5,
                warmup=1,
            )
        except Exception as error:  # a tiling that does not compile
            emit(kernel="pq_scores", gather_rows=gather_rows, block_n=block_n, block_m=block_m, warps=warps,
                 error=str(error)[:200])
            continue
        tiling = {"gather_rows": gather_rows, "block_n": block_n, "block_m": block_m, "warps": warps}
        emit(kernel="pq_scores", **tiling, ms=round(ms, 3))
        if best is None or ms < best[0]:
            best = (ms, gather_rows, block_n, block_m, warps)
    emit(best_kernel=best)
    for chunk in (1 << 20, 1 << 21, 1 << 22, 1 << 23, docs):
        def chunked():
            results = []
            for start in range(0, docs, chunk):
                results.append(torch.topk(out[:, start : start + chunk], k, dim=1))
            return results

        emit(topk_chunk=chunk, ms=round(cuda_ms(chunked, repeats=5), 3))
    emit(topk_half_full=round(cuda_ms(lambda: torch.topk(out.half(), k, dim=1), repeats=5), 3))
    del out
    for kernel in ("triton", "torch"):
        for chunk in ((1 << 22, 1 << 23, 1 << 24) if kernel == "triton" else (1 << 19, 1 << 20)):
            searcher = PQTorchSearcher(codes, table.view(m, 256, dsub), kernel=kernel, chunk_size=chunk)
            emit(pq_searcher=kernel, chunk=chunk, ms=round(cuda_ms(lambda: searcher.topk(queries, k), repeats=5), 3))
            del searcher
    del codes
    torch.cuda.empty_cache()
    matrix = torch.randn((docs, 768), device="cuda", dtype=torch.float16, generator=generator)
    for chunk in (1 << 20, 1 << 22, 1 << 24):
        flat = FlatTorchSearcher(matrix[:16], chunk_size=chunk)  # then swap in the full matrix without a copy
        flat.matrix = matrix
        emit(flat_chunk=chunk, ms=round(cuda_ms(lambda: flat.topk(queries, k), repeats=5), 3))
    emit(matmul_only_ms=round(cuda_ms(lambda: queries @ matrix.T, repeats=5), 3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=8_841_823)
    parser.add_argument("--skip-check", action="store_true")
    args = parser.parse_args()
    emit(device=torch.cuda.get_device_name(), torch=torch.__version__)
    if not args.skip_check:
        for dim, m, docs, opq in ((768, 96, 100_000, False), (384, 96, 50_000, False), (128, 16, 50_000, True)):
            try:
                check(dim, m, docs, opq)
            except Exception as error:
                emit(check=f"D{dim} M{m}", error=repr(error)[:500])
    tune(args.docs)


if __name__ == "__main__":
    main()
