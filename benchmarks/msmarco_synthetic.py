"""An MS MARCO-shaped synthetic dataset from real English text (SciFact's sentences, recombined).

    python benchmarks/msmarco_synthetic.py /tmp/msmarco-1m --passages 1000000 [--layout msmarco|beir]
    python benchmarks/msmarco_synthetic.py --bm25-check --passages 1000000     # BM25 MRR@10 on 1,000 dev queries

Passages: ~56 words (target lengths drawn from a right-skewed gamma distribution; 1M passages: mean 56.3 words,
p5 30, median 53, p95 95), filled with 2 or more whole sentences drawn uniformly from SciFact's 49,801 sentences
(titles and abstract sentences of 4-90 words), so passages are topic-mixed but never cut mid-sentence, and two
passages are practically never equal. Queries: ~6 lower-cased content words (1M: mean 5.96), two thirds a contiguous
span of one sentence of their passage (the anchor), one third from another of its sentences, so that the judged
passage is (almost surely) the only one holding both; ~10% of queries (``second_fraction``) have a second judged
passage that holds the anchor sentence too (1.1 judged passages a query, as in MS MARCO's train set). The defaults
scale MS MARCO's counts (8,841,823 passages, 502,939 train queries) to ``--passages``; dev queries are 6,980 at full
size and at least 1,000 (at most a tenth of the passages) below it. Written as a stream: 1M passages in 7.5 s
(134k passages/s, one core) with a 0.3 GB peak RSS that does not grow with ``--passages`` (but for the queries'
texts); the same seed gives the same bytes. Layouts: msmarco (collection.tsv, queries.{train,dev}.tsv,
qrels.{train,dev}.tsv in TREC form) or beir (corpus.jsonl, queries.jsonl, qrels/{train,dev}.tsv with a header):
`dataset.format: msmarco` (or beir) with `splits: [train, dev]` reads it.

How it biases BM25 against real MS MARCO (bm25s with the `bm25` stage's settings: k1 1.5, b 0.75, English
stopwords, Snowball stemmer; 1,000 dev queries):

- Every sentence recurs: 52 times on average at 1M passages (p5-p95 40-64; 2.6 sentences a passage), ~460 times at
  full size. Document frequencies are SciFact's sentence frequencies multiplied, nearly uniformly, by the
  recurrence, so IDF = ln(N/df) ~ ln(49,801 / (2.6 x sentences holding the term)) does not grow with the corpus:
  the rarest term (34% of the 26k stemmed terms are in one sentence) has df ~ 52 at 1M, not 1, and the largest
  IDF is ~9.8 at any size where real text reaches ~16 at 8.8M passages. The vocabulary is SciFact's 26k stemmed
  terms (biomedical abstracts), not a web vocabulary of millions; terms rank by IDF as they do in SciFact.
- Passages that share a sentence share a span of ~23 words: a query lifted from one sentence ties with every
  passage holding it, one of them judged. Queries drawn from the anchor sentence alone: MRR@10 0.062 at 1M (R@100
  0.93); with a third of the words from a second sentence (the default) 0.697; half 0.845. One-sentence passages,
  allowed at first, recurred verbatim ~5 times each at 1M and left 57% of queries with a tied top score (3.5% now).
- Queries are lifted from their passage: every query word is in it (no paraphrase, no question words), so BM25 is
  far stronger than on MS MARCO (MRR@10 ~0.187 on MS MARCO dev): 0.856 at 100k passages (R@100 0.991), 0.697 at
  1M (R@100 0.959), falling as recurrence grows with the corpus. The ~52 passages (at 1M) that hold the anchor
  sentence score close to the judged one and are partly relevant, so BM25-mined "hard negatives" are more often
  false negatives than on MS MARCO.

Use it for throughput and memory at MS MARCO's scale and shape, not to compare the quality of retrievers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCIFACT = Path(__file__).resolve().parent.parent / "resources" / "scifact"
MSMARCO = {"passages": 8_841_823, "train": 502_939, "dev": 6_980}
PASSAGE_WORDS = 56  # MS MARCO's mean passage length in words
GAMMA_SHAPE = 4.0  # spread of the target lengths (sd = mean / 2)
MAX_SENTENCES = 12  # slots drawn a passage (targets above ~250 words are cut there)
MIN_SENTENCES = 2  # one-sentence passages would recur verbatim (~5 copies each at 1M passages)
BLOCK = 65536  # passages generated and written at a time
OTHER_SHARE = 1 / 3  # share of a query's words taken from a second sentence of the passage
SENTENCE_WORDS = (4, 90)
SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
WORD = re.compile(r"[a-z][a-z0-9'\-]*[a-z0-9]|[a-z]{2,}")
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having he her
    here hers herself him himself his how however i if in into is it its itself just may me might more most must my
    no nor not now of off on once only or other our ours out over own per same she should so some such than that the
    their theirs them then there these they this those through thus to too under until up upon very via was we were
    what when where which while who whom why will with within without would you your""".split()
)


@dataclass
class Pool:
    """SciFact's sentences: text, words each, and each one's content words (for queries)."""

    texts: list[str]
    words: np.ndarray
    content: list[tuple[str, ...]]


def load_sentences(source: Path) -> Pool:
    """Titles and abstract sentences of ``source``'s corpus (BEIR layout), whitespace normalised, 4-90 words."""
    path = source / "corpus.jsonl"
    opener = open if path.is_file() else gzip.open
    path = path if path.is_file() else source / "corpus.jsonl.gz"
    texts: list[str] = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            texts.append(" ".join(str(doc.get("title") or "").split()))
            texts += SPLIT.split(" ".join(str(doc["text"]).split()))
    low, high = SENTENCE_WORDS
    texts = list(dict.fromkeys(t for t in texts if low <= len(t.split()) <= high))
    words = np.array([len(t.split()) for t in texts], dtype=np.int64)
    content = [tuple(w for w in WORD.findall(t.lower()) if w not in STOPWORDS) for t in texts]
    return Pool(texts, words, content)


def default_counts(passages: int) -> tuple[int, int]:
    """(train, dev) queries for a corpus of ``passages``: MS MARCO's ratio for train; dev 6,980 at full size."""
    train = max(1, round(MSMARCO["train"] * passages / MSMARCO["passages"]))
    dev = min(MSMARCO["dev"], max(1000, round(MSMARCO["dev"] * passages / MSMARCO["passages"])), passages // 10)
    return train, max(1, dev)


@dataclass
class Plan:
    """Which passages carry a query's sentence: sorted pids, the sentence forced into each, the query (or -1)."""

    pids: np.ndarray
    sentences: np.ndarray
    queries: np.ndarray
    seconds: np.ndarray  # per query: its second judged pid, or -1


def make_plan(rng: np.random.Generator, passages: int, queries: int, sentences: int, second_fraction: float) -> Plan:
    seconds = np.flatnonzero(rng.random(queries) < second_fraction)
    if queries + len(seconds) > passages:
        raise ValueError(f"{queries} queries (+{len(seconds)} second judgments) need more than {passages} passages")
    chosen = rng.choice(passages, size=queries + len(seconds), replace=False)
    anchors = rng.integers(0, sentences, size=queries)
    second = np.full(queries, -1, dtype=np.int64)
    second[seconds] = chosen[queries:]
    forced = np.concatenate([anchors, anchors[seconds]])
    owner = np.concatenate([np.arange(queries), np.full(len(seconds), -1)])
    order = np.argsort(chosen)
    return Plan(chosen[order], forced[order], owner[order], second)


def draw_block(rng: np.random.Generator, pool: Pool, first: int, size: int, plan: Plan, scale: float):
    """Sentence ids (size x MAX_SENTENCES), sentences used per passage, and (row, query, anchor slot) triples."""
    targets = rng.gamma(GAMMA_SHAPE, scale, size)
    ids = rng.integers(0, len(pool.texts), size=(size, MAX_SENTENCES))
    lo, hi = np.searchsorted(plan.pids, [first, first + size])
    rows = plan.pids[lo:hi] - first
    ids[rows, 0] = plan.sentences[lo:hi]
    cum = np.cumsum(pool.words[ids], axis=1)
    used = np.minimum((cum < targets[:, None]).sum(axis=1) + 1, MAX_SENTENCES)
    before = np.where(used > 1, cum[np.arange(size), used - 2], 0)
    after = cum[np.arange(size), used - 1]
    used -= (used > 1) & (targets - before < after - targets)  # stop at the sentence boundary nearer the target
    used = np.maximum(used, MIN_SENTENCES)
    slots = (rng.random(len(rows)) * used[rows]).astype(np.int64)  # the forced sentence moves to a random slot
    ids[rows, 0], ids[rows, slots] = ids[rows, slots], plan.sentences[lo:hi]
    owners = plan.queries[lo:hi]
    keep = owners >= 0
    return ids, used, list(zip(rows[keep].tolist(), owners[keep].tolist(), slots[keep].tolist()))


def make_query(r: random.Random, pool: Pool, sentences: list[int], slot: int, length: int) -> str:
    """``length`` content words: a contiguous span of the anchor sentence's, a third of them from another one's."""
    anchor = pool.content[sentences[slot]] or tuple(pool.texts[sentences[slot]].lower().split())
    others = [pool.content[s] for i, s in enumerate(sentences) if i != slot and pool.content[s]]
    extra = int(length * OTHER_SHARE) if others else 0
    span = max(1, length - extra)
    start = r.randrange(max(1, len(anchor) - span + 1))
    words = list(anchor[start : start + span])
    if extra:
        other = r.choice(others)
        words += [other[i] for i in sorted(r.sample(range(len(other)), min(extra, len(other))))]
    return " ".join(words)


class Writer:
    """The files of one layout, written as passages and then queries come."""

    def __init__(self, out: Path, layout: str):
        self.out, self.layout = Path(out), layout
        self.out.mkdir(parents=True, exist_ok=True)
        name = "collection.tsv" if layout == "msmarco" else "corpus.jsonl"
        self.corpus = open(self.out / name, "w", encoding="utf-8", buffering=1 << 20)

    def passages(self, first: int, texts: list[str]) -> None:
        if self.layout == "msmarco":
            lines = [f"{first + i}\t{t}\n" for i, t in enumerate(texts)]
        else:
            lines = [json.dumps({"_id": str(first + i), "title": "", "text": t}) + "\n" for i, t in enumerate(texts)]
        self.corpus.write("".join(lines))

    def close(self, splits: dict[str, tuple[list[int], list[str], list[list[int]]]]) -> None:
        self.corpus.close()
        if self.layout == "msmarco":
            for split, (qids, texts, judged) in splits.items():
                _write(self.out / f"queries.{split}.tsv", (f"{q}\t{t}\n" for q, t in zip(qids, texts)))
                rows = (f"{q}\t0\t{p}\t1\n" for q, pids in zip(qids, judged) for p in pids)
                _write(self.out / f"qrels.{split}.tsv", rows)
            return
        (self.out / "qrels").mkdir(exist_ok=True)
        queries = ((q, t) for qids, texts, _ in splits.values() for q, t in zip(qids, texts))
        _write(self.out / "queries.jsonl", (json.dumps({"_id": str(q), "text": t}) + "\n" for q, t in queries))
        for split, (qids, _, judged) in splits.items():
            rows = (f"{q}\t{p}\t1\n" for q, pids in zip(qids, judged) for p in pids)
            _write(self.out / "qrels" / f"{split}.tsv", ["query-id\tcorpus-id\tscore\n", *rows])


def _write(path: Path, lines) -> None:
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as handle:
        handle.writelines(lines)


def generate(
    out: Path,
    passages: int,
    train: int | None = None,
    dev: int | None = None,
    seed: int = 0,
    layout: str = "msmarco",
    source: Path = SCIFACT,
    second_fraction: float = 0.1,
) -> dict:
    """Writes the dataset into ``out``; returns its size statistics."""
    began = time.perf_counter()
    default_train, default_dev = default_counts(passages)
    train, dev = default_train if train is None else train, default_dev if dev is None else dev
    pool = load_sentences(Path(source))
    rng = np.random.default_rng(seed)
    r = random.Random(seed)
    plan = make_plan(rng, passages, train + dev, len(pool.texts), second_fraction)
    lengths = np.clip(rng.poisson(5, train + dev) + 1, 2, 12).tolist()
    scale = calibrated_scale(pool)
    queries: list[str] = [""] * (train + dev)
    recur = np.zeros(len(pool.texts), dtype=np.int64)
    words = 0
    writer = Writer(out, layout)
    for first in range(0, passages, BLOCK):
        ids, used, owned = draw_block(rng, pool, first, min(BLOCK, passages - first), plan, scale)
        mask = np.arange(MAX_SENTENCES) < used[:, None]
        recur += np.bincount(ids[mask], minlength=len(pool.texts))
        words += int(pool.words[ids][mask].sum())
        rows = [row[:n] for row, n in zip(ids.tolist(), used.tolist())]
        writer.passages(first, [" ".join([pool.texts[s] for s in row]) for row in rows])
        for row, query, slot in owned:
            queries[query] = make_query(r, pool, rows[row], slot, lengths[query])
    qids = (rng.choice(10 * (train + dev), size=train + dev, replace=False) + 1).tolist()
    pids = np.empty(train + dev, dtype=np.int64)
    pids[plan.queries[plan.queries >= 0]] = plan.pids[plan.queries >= 0]
    judged = [[p] if s < 0 else [p, s] for p, s in zip(pids.tolist(), plan.seconds.tolist())]
    parts = {"train": slice(0, train), "dev": slice(train, train + dev)}
    writer.close({name: (qids[part], queries[part], judged[part]) for name, part in parts.items()})
    seconds = time.perf_counter() - began
    return stats(passages, words, queries, judged, recur, seconds)


def calibrated_scale(pool: Pool) -> float:
    """The gamma scale whose passages average PASSAGE_WORDS words (whole sentences overshoot or undershoot)."""
    rng, pool_plan = np.random.default_rng(12345), Plan(*(np.zeros(0, dtype=np.int64),) * 4)
    scale = PASSAGE_WORDS / GAMMA_SHAPE
    for _ in range(4):
        ids, used, _ = draw_block(rng, pool, 0, 20000, pool_plan, scale)
        mean = pool.words[ids][np.arange(MAX_SENTENCES) < used[:, None]].sum() / len(used)
        scale *= PASSAGE_WORDS / mean
    return float(scale)


def stats(passages: int, words: int, queries: list[str], judged: list[list[int]], recur: np.ndarray, seconds: float):
    query_words = np.array([len(q.split()) for q in queries]) if queries else np.zeros(1)
    return {
        "passages": passages,
        "mean_passage_words": round(words / max(1, passages), 2),
        "queries": len(queries),
        "mean_query_words": round(float(query_words.mean()), 2),
        "judged_per_query": round(sum(map(len, judged)) / max(1, len(judged)), 3),
        "sentences": int(len(recur)),
        "sentence_recurrence_mean": round(float(recur.mean()), 2),
        "sentence_recurrence_p5_p50_p95": [int(v) for v in np.percentile(recur, [5, 50, 95])],
        "seconds": round(seconds, 2),
        "passages_per_s": round(passages / seconds),
    }


def bm25_check(passages: int = 100_000, dev: int = 1000, seed: int = 0) -> dict:
    """BM25 (bm25s, the `bm25` stage's settings) MRR@10 and R@100 on the dev queries of a synthetic corpus."""
    import tempfile

    import bm25s
    import Stemmer

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), passages, train=1, dev=dev, seed=seed)
        corpus = [line.rstrip("\n").split("\t") for line in open(Path(tmp) / "collection.tsv", encoding="utf-8")]
        queries = [line.rstrip("\n").split("\t") for line in open(Path(tmp) / "queries.dev.tsv", encoding="utf-8")]
        qrels: dict[str, set[str]] = {}
        for line in open(Path(tmp) / "qrels.dev.tsv"):
            qid, _, pid, _ = line.split("\t")
            qrels.setdefault(qid, set()).add(pid)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    texts = bm25s.tokenize([t for _, t in corpus], stopwords="en", stemmer=stemmer, show_progress=False)
    retriever.index(texts, show_progress=False)
    tokens = bm25s.tokenize([t for _, t in queries], stopwords="en", stemmer=stemmer, show_progress=False)
    top, scores = retriever.retrieve(tokens, k=100, show_progress=False)
    mrr = recall = ties = 0.0
    for (qid, _), row, score in zip(queries, top, scores):
        ranked = [corpus[i][0] for i in row]
        hits = [rank for rank, pid in enumerate(ranked[:10]) if pid in qrels[qid]]
        mrr += 1 / (hits[0] + 1) if hits else 0
        recall += len(qrels[qid] & set(ranked)) / len(qrels[qid])
        ties += bool(np.isclose(score[0], score[1], rtol=1e-4))
    n = len(queries)
    return {"passages": passages, "queries": n, "mrr@10": round(mrr / n, 4), "r@100": round(recall / n, 4),
            "top1_tied": round(ties / n, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="output folder")
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--train-queries", type=int, help="default: MS MARCO's queries a passage")
    parser.add_argument("--dev-queries", type=int, help="default: 6,980 at full size, >= 1,000 below")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=["msmarco", "beir"], default="msmarco")
    parser.add_argument("--source", type=Path, default=SCIFACT, help="a BEIR folder whose corpus gives the sentences")
    parser.add_argument("--second-fraction", type=float, default=0.1, help="queries with a second judged passage")
    parser.add_argument("--bm25-check", action="store_true", help="measure BM25 on a fresh corpus of --passages")
    args = parser.parse_args(argv)
    if args.bm25_check:
        print(json.dumps(bm25_check(args.passages, args.dev_queries or 1000, args.seed)))
        return 0
    if args.out is None:
        parser.error("the output folder is required")
    summary = generate(
        args.out, args.passages, args.train_queries, args.dev_queries, args.seed, args.layout, args.source,
        args.second_fraction,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
