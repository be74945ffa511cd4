"""`hardneg compare` on two fixed TREC runs: its means are ir_measures', its p-values scipy's permutation test."""

from __future__ import annotations

import json

import ir_measures
import numpy as np
import pytest
from scipy.stats import permutation_test

from stages.core.errors import ConfigError, DataError
from stages.pipeline.command import main
from stages.pipeline.compare import Judgments, compare, pointer_name, read_trec_run

QUERIES, DOCS = 12, 30


def write_fixture(folder):
    """Judgments and two runs (tags sys_a, sys_b) without score ties; sys_a ranks the relevant documents higher."""
    rng = np.random.default_rng(7)
    qrels = [
        f"q{q} 0 d{d} {int(rng.integers(1, 3))}\n" for q in range(QUERIES) for d in rng.choice(DOCS, 3, replace=False)
    ]
    (folder / "qrels.txt").write_text("".join(qrels))
    relevant = {(line.split()[0], line.split()[2]) for line in qrels}
    for tag, boost in (("sys_a", 0.6), ("sys_b", 0.1)):
        lines = []
        for q in range(QUERIES):
            scores = rng.random(DOCS) + np.array([boost * ((f"q{q}", f"d{d}") in relevant) for d in range(DOCS)])
            for rank, d in enumerate(np.argsort(-scores), start=1):
                lines.append(f"q{q} Q0 d{d} {rank} {scores[d]:.6f} {tag}\n")
        (folder / f"{tag}.trec").write_text("".join(lines))
    return folder / "qrels.txt", [folder / "sys_a.trec", folder / "sys_b.trec"]


def test_compare_matches_ir_measures_and_scipy(tmp_path):
    qrels, runs = write_fixture(tmp_path)
    result = compare(runs, Judgments(qrels), ["nDCG@10", "MRR@10"])
    assert result["runs"] == ["sys_a", "sys_b"]
    judged = list(ir_measures.read_trec_qrels(str(qrels)))
    per_query = {}
    for run, tag in zip(runs, result["runs"]):
        ranked = list(ir_measures.read_trec_run(str(run)))
        means = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.RR @ 10], judged, ranked)
        assert result["means"][tag]["nDCG@10"] == pytest.approx(means[ir_measures.nDCG @ 10])
        assert result["means"][tag]["MRR@10"] == pytest.approx(means[ir_measures.RR @ 10])
        low, high = result["intervals"][tag]["nDCG@10"]
        assert low <= result["means"][tag]["nDCG@10"] <= high
        values = {m.query_id: m.value for m in ir_measures.iter_calc([ir_measures.nDCG @ 10], judged, ranked)}
        per_query[tag] = np.array([values[f"q{q}"] for q in range(QUERIES)])
    exact = permutation_test(
        (per_query["sys_a"], per_query["sys_b"]), lambda a, b, axis: np.mean(a - b, axis=axis),
        permutation_type="samples", n_resamples=np.inf, vectorized=True,
    )  # fmt: skip
    test = next(t for t in result["tests"] if t["measure"] == "nDCG@10")
    assert test["p_value"] == pytest.approx(exact.pvalue, abs=0.01)  # 10000 random sign flips vs all 2^12
    assert test["p_holm"] == test["p_value"]  # one pair a measure: nothing to correct


def test_compare_command_table_and_pointer_names(tmp_path, capsys):
    qrels, runs = write_fixture(tmp_path)
    assert main(["compare", *map(str, runs), "--qrels", str(qrels), "--measures", "nDCG@10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "Model", "nDCG@10"] and lines[1].split()[:2] == ["a", "sys_a"]
    assert "ᵇ" in lines[1]  # sys_a beats sys_b (Holm-corrected p < 0.05)
    assert pointer_name(tmp_path / "results" / "runs" / "star" / "seed-1" / "score-test") == "star_seed-1"
    assert pointer_name(tmp_path / "results" / "score" / "0123456789abcdef") is None
    assert main(["compare", str(tmp_path / "missing")]) == 2


def test_score_ties_break_by_doc_id_descending_as_trec_eval_and_missing_qrels_fail(tmp_path):
    (tmp_path / "tie.trec").write_text("q1 Q0 a 1 1.0 t\nq1 Q0 b 2 1.0 t\n")
    run, tag = read_trec_run(tmp_path / "tie.trec")
    assert run["doc_id"].tolist() == ["b", "a"] and run["rank"].tolist() == [1, 2] and tag == "t"
    with pytest.raises(DataError):
        compare([tmp_path / "tie.trec"], Judgments(tmp_path / "nowhere"), ["MRR@10"])


def ir_measures_means(qrels, run, measure=ir_measures.nDCG @ 10) -> dict[str, float]:
    judged = list(ir_measures.read_trec_qrels(str(qrels)))
    return {m.query_id: m.value for m in ir_measures.iter_calc([measure], judged, ir_measures.read_trec_run(str(run)))}


def test_a_run_without_tags_is_named_after_its_file_and_beir_qrels_read_with_their_header(tmp_path):
    qrels, runs = write_fixture(tmp_path)
    untagged = tmp_path / "untagged.trec"
    untagged.write_text("".join(line.rsplit(" ", 1)[0] + "\n" for line in runs[0].read_text().splitlines()))
    beir = tmp_path / "test.tsv"  # BEIR's qrels/test.tsv: a header line, then query-id, corpus-id, score
    rows = (line.split() for line in qrels.read_text().splitlines())
    beir.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, _, d, r in rows))
    result = compare([untagged], Judgments(beir), ["nDCG@10"])
    assert result["runs"] == ["untagged"]
    expected = ir_measures_means(qrels, runs[0])
    assert result["means"]["untagged"]["nDCG@10"] == pytest.approx(np.mean(list(expected.values())))


def test_a_run_missing_judged_queries_is_warned_and_averaged_over_all_judged_queries(tmp_path, capsys):
    qrels, runs = write_fixture(tmp_path)
    partial = tmp_path / "partial.trec"
    partial.write_text("".join(line for line in open(runs[0]) if line.split()[0] not in {"q0", "q1", "q2"}))
    assert main(["compare", str(partial), "--qrels", str(qrels), "--measures", "nDCG@10", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "3 of the 12 judged queries" in captured.err
    result = json.loads(captured.out)
    ranked = {q: v for q, v in ir_measures_means(qrels, partial).items() if q not in {"q0", "q1", "q2"}}
    assert result["means"]["sys_a"]["nDCG@10"] == pytest.approx(sum(ranked.values()) / QUERIES)
    assert result["missing"] == {"sys_a": 3} and "trec_eval -c" in result["averaged"]
    assert main(["compare", str(partial), "--qrels", str(qrels), "--measures", "nDCG@10"]) == 0
    assert "all 12 judged queries" in capsys.readouterr().out


def test_compare_refuses_what_it_cannot_score(tmp_path):
    qrels, runs = write_fixture(tmp_path)
    repeated = tmp_path / "repeated.trec"  # one document twice: ir_measures would keep one line of the two
    repeated.write_text(runs[0].read_text() + "q0 Q0 d0 31 99.0 sys_a\n")
    with pytest.raises(DataError, match=r"ranked twice for query 'q0' \(first on line \d+\)") as error:
        compare([repeated], Judgments(qrels), ["nDCG@10"])
    assert error.value.line == 12 * 30 + 1 and error.value.path == str(repeated)
    for samples in (0, -5, 19):
        with pytest.raises(ConfigError, match="--samples"):
            compare(runs, Judgments(qrels), ["nDCG@10"], samples=samples)
    with pytest.raises(ConfigError, match="not averaged over queries"):
        compare(runs, Judgments(qrels), ["NumRet"])
