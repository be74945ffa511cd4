"""Bad input, as a user meets it: each case runs the DAG (`stages.pipeline.run_plan`, in process) on a small dataset with one
thing wrong, and asserts the exit code, a message naming the file and line (or the config key) with a fix, no
traceback, and nothing left under results/ but logs (and the raw-file hash cache). `COMMANDS` does the same for
`hardneg compare` and `hardneg export`, through the command."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.pipeline import run_plan

HEADER = "query-id\tcorpus-id\tscore\n"


def doc(i, text="some text", title="t", **extra):
    return json.dumps({"_id": i, "title": title, "text": text, **extra})


def query(i, text="a question"):
    return json.dumps({"_id": i, "text": text})


BEIR = {
    "corpus.jsonl": "\n".join([doc("1"), doc("2"), doc("3")]) + "\n",
    "queries.jsonl": "\n".join([query("q1"), query("q2"), query("q3")]) + "\n",
    "qrels/train.tsv": HEADER + "q1\t1\t1\n",
    "qrels/test.tsv": HEADER + "q2\t2\t1\n",
}
MSMARCO = {
    "collection.tsv": "1\tfirst passage\n2\tsecond passage\n3\tthird passage\n",
    "queries.train.tsv": "q1\ta question\n",
    "queries.test.tsv": "q2\tanother question\n",
    "qrels.train.tsv": "q1\t0\t1\t1\n",
    "qrels.test.tsv": "q2\t0\t2\t1\n",
}


def beir(**files):
    return {"layout": "beir", "files": files}


def marco(**files):
    return {"layout": "msmarco", "files": files}


def hub(name):
    return {"layout": "beir", "files": {}, "hub": name}


def cfg(**values):
    return {"layout": "beir", "files": {}, "config": values}


def lines(*items):
    return "\n".join(items) + "\n"


C, Q, QT = "corpus.jsonl", "queries.jsonl", "qrels/test.tsv"
# name -> (setup, exit code, where: "file:line" or the config key, words the message must contain)
CASES = {
    # --- BEIR corpus ---
    "corpus-malformed-json": (beir(**{C: lines(doc("1"), "{oops", doc("2"))}), 1, "corpus.jsonl:2", "malformed JSON"),
    "corpus-not-object": (beir(**{C: lines(doc("1"), "[1, 2]", doc("2"))}), 1, "corpus.jsonl:2", "JSON object"),
    "corpus-missing-id": (beir(**{C: lines(doc("1"), json.dumps({"text": "x"}), doc("2"))}), 1, "corpus.jsonl:2", "'_id'"),
    "corpus-missing-text": (beir(**{C: lines(doc("1"), doc("2"), json.dumps({"_id": "3"}))}), 1, "corpus.jsonl:3", "'text'"),
    "corpus-duplicate-id": (beir(**{C: lines(doc("1"), doc("2"), doc("1"))}), 1, "corpus.jsonl:3", "first on line 1"),
    "corpus-duplicate-after-strip": (beir(**{C: lines(doc("1"), doc("2"), doc(" 2 "))}), 1, "corpus.jsonl:3", "duplicate"),
    "corpus-null-id": (beir(**{C: lines(doc("1"), doc(None), doc("2"))}), 1, "corpus.jsonl:2", "not a string or an integer"),
    "corpus-float-id": (beir(**{C: lines(doc("1"), doc(2.5), doc("2"))}), 1, "corpus.jsonl:2", "not a string or an integer"),
    "corpus-bool-id": (beir(**{C: lines(doc("1"), doc(True), doc("2"))}), 1, "corpus.jsonl:2", "not a string or an integer"),
    "corpus-list-id": (beir(**{C: lines(doc("1"), doc([1]), doc("2"))}), 1, "corpus.jsonl:2", "not a string or an integer"),
    "corpus-empty-id": (beir(**{C: lines(doc("1"), doc("  "), doc("2"))}), 1, "corpus.jsonl:2", "empty document id"),
    "corpus-id-with-tab": (beir(**{C: lines(doc("1"), doc("2"), doc("a\tb"))}), 1, "corpus.jsonl:3", "whitespace"),
    "corpus-id-with-newline": (beir(**{C: lines(doc("1"), doc("2"), doc("a\nb"))}), 1, "corpus.jsonl:3", "whitespace"),
    "corpus-id-with-space": (beir(**{C: lines(doc("1"), doc("2"), doc("a b"))}), 1, "corpus.jsonl:3", "whitespace"),
    "corpus-text-number": (beir(**{C: lines(doc("1"), doc("2", text=5), doc("3"))}), 1, "corpus.jsonl:2", "'text' is int"),
    "corpus-title-list": (beir(**{C: lines(doc("1"), doc("2", title=["a"]), doc("3"))}), 1, "corpus.jsonl:2", "'title'"),
    "corpus-invalid-utf8": (beir(**{C: b'{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "caf\xe9"}\n'}), 1, "corpus.jsonl:2", "UTF-8"),
    "corpus-empty-file": (beir(**{C: "\n\n"}), 1, "corpus.jsonl", "empty corpus"),
    "corpus-empty-doc-error": (
        {**beir(**{C: lines(doc("1"), doc("2"), doc("3", text="", title=""))}), "config": {"dataset.empty_documents": "error"}},
        1, "corpus.jsonl:3", "empty text",
    ),
    "corpus-all-empty-dropped": (
        {**beir(**{C: lines(doc("1", text="", title=""), doc("2", text=" ", title=""))}), "config": {"dataset.empty_documents": "drop"}},
        1, "corpus.jsonl", "empty corpus",
    ),
    "corpus-gz-broken-json": (beir(**{C: None, "corpus.jsonl.gz": ("gz", lines(doc("1"), "{x"))}), 1, "corpus.jsonl.gz:2", "malformed JSON"),
    "corpus-gz-truncated": (beir(**{C: None, "corpus.jsonl.gz": ("gz-truncated", lines(*[doc(str(i)) for i in range(200)]))}), 1, "corpus.jsonl.gz", "damaged"),
    "corpus-gz-not-gzip": (beir(**{C: None, "corpus.jsonl.gz": b"plain text, not gzip\n"}), 1, "corpus.jsonl.gz", "gzip"),
    # --- BEIR queries ---
    "queries-malformed-json": (beir(**{Q: lines(query("q1"), "{", query("q2"))}), 1, "queries.jsonl:2", "malformed JSON"),
    "queries-missing-text": (beir(**{Q: lines(query("q1"), json.dumps({"_id": "q2"}))}), 1, "queries.jsonl:2", "'text'"),
    "queries-duplicate-id": (beir(**{Q: lines(query("q1"), query("q2"), query("q1"))}), 1, "queries.jsonl:3", "duplicate query id"),
    "queries-empty-judged": (beir(**{Q: lines(query("q1"), query("q2", text="  "))}), 1, "queries.jsonl:2", "empty text"),
    "queries-null-id": (beir(**{Q: lines(query("q1"), query(None), query("q2"))}), 1, "queries.jsonl:2", "not a string or an integer"),
    "queries-id-with-space": (beir(**{Q: lines(query("q1"), query("q 2"))}), 1, "queries.jsonl:2", "whitespace"),
    "queries-text-object": (beir(**{Q: lines(query("q1"), json.dumps({"_id": "q2", "text": {"a": 1}}))}), 1, "queries.jsonl:2", "'text'"),
    # --- qrels ---
    "qrels-not-integer": (beir(**{QT: HEADER + "q2\t2\tyes\n"}), 1, "test.tsv:2", "not an integer"),
    "qrels-fraction": (beir(**{QT: HEADER + "q2\t2\t0.5\n"}), 1, "test.tsv:2", "not an integer"),
    "qrels-nan": (beir(**{QT: HEADER + "q2\t2\tnan\n"}), 1, "test.tsv:2", "not an integer"),
    "qrels-inf": (beir(**{QT: HEADER + "q2\t2\tinf\n"}), 1, "test.tsv:2", "not an integer"),
    "qrels-spaces": (beir(**{QT: HEADER + "q2 2 1\n"}), 1, "test.tsv:2", "tab-separated"),
    "qrels-two-columns": (beir(**{QT: HEADER + "q2\t2\n"}), 1, "test.tsv:2", "tab-separated"),
    "qrels-five-columns": (beir(**{QT: HEADER + "q2\t0\t2\t1\textra\n"}), 1, "test.tsv:2", "tab-separated"),
    "qrels-unknown-header": (beir(**{QT: "query\tdocument\tlabel\nq2\t2\t1\n"}), 1, "test.tsv:1", "not an integer"),
    "qrels-header-twice": (beir(**{QT: HEADER + HEADER + "q2\t2\t1\n"}), 1, "test.tsv:2", "not an integer"),
    "qrels-conflicting-repeat": (beir(**{QT: HEADER + "q2\t2\t1\nq2\t2\t0\n"}), 1, "test.tsv:3", "on line 2"),
    "qrels-unknown-query": (beir(**{QT: HEADER + "q2\t2\t1\nq9\t2\t1\n"}), 1, "test.tsv:3", "unknown query id 'q9'"),
    "qrels-unknown-doc": (beir(**{QT: HEADER + "q2\t2\t1\nq2\t77\t1\n"}), 1, "test.tsv:3", "unknown document id '77'"),
    "qrels-no-positive": (beir(**{QT: HEADER + "q2\t2\t0\n"}), 1, "test.tsv", "no query with a positive judgment"),
    "qrels-empty-doc-id": (beir(**{QT: HEADER + "q2\t \t1\n"}), 1, "test.tsv:2", "empty document id"),
    "qrels-empty-file": (beir(**{QT: ""}), 1, "test.tsv", "no query with a positive judgment"),
    # --- MS MARCO TSV ---
    "msmarco-collection-one-column": (marco(**{"collection.tsv": "1\tfine\n2\n"}), 1, "collection.tsv:2", "tab-separated"),
    "msmarco-collection-four-columns": (marco(**{"collection.tsv": "1\tfine\n2\ta\tb\tc\n"}), 1, "collection.tsv:2", "pid<TAB>title<TAB>text"),
    "msmarco-collection-duplicate": (marco(**{"collection.tsv": "1\ta\n2\tb\n1\tc\n"}), 1, "collection.tsv:3", "first on line 1"),
    "msmarco-collection-empty": (marco(**{"collection.tsv": ""}), 1, "collection.tsv", "empty corpus"),
    "msmarco-collection-id-space": (marco(**{"collection.tsv": "1\ta\n2 2\tb\n"}), 1, "collection.tsv:2", "whitespace"),
    "msmarco-queries-three-columns": (marco(**{"queries.train.tsv": "q1\ta\tb\n"}), 1, "queries.train.tsv:1", "tab-separated"),
    "msmarco-queries-duplicate": (marco(**{"queries.train.tsv": "q1\ta\nq1\tb\n"}), 1, "queries.train.tsv:2", "duplicate query id"),
    "msmarco-qrels-bad-relevance": (marco(**{"qrels.train.tsv": "q1\t0\t1\tx\n"}), 1, "qrels.train.tsv:1", "not an integer"),
    "msmarco-qrels-unknown-doc": (marco(**{"qrels.test.tsv": "q2\t0\t9\t1\n"}), 1, "qrels.test.tsv:1", "unknown document id '9'"),
    "msmarco-collection-missing": (marco(**{"collection.tsv": None}), 2, "collection.tsv", "not found"),
    "msmarco-queries-missing": (marco(**{"queries.test.tsv": None}), 2, "queries.test.tsv", "not found"),
    # --- missing BEIR files ---
    "beir-corpus-missing": (beir(**{C: None}), 2, "corpus.jsonl", "not found"),
    "beir-queries-missing": (beir(**{Q: None}), 2, "queries.jsonl", "not found"),
    "beir-qrels-missing": (beir(**{QT: None}), 2, "qrels/test.tsv", "not found"),
    # --- config ---
    "config-unknown-key": (cfg(**{"dataset.colour": "red"}), 2, "dataset", "unknown key"),
    "config-nan": (cfg(**{"bm25.k1": float("nan")}), 2, "bm25.k1", "finite"),
    "config-infinity": (cfg(**{"bm25.b": float("inf")}), 2, "bm25.b", "finite"),
    "config-wrong-type": (cfg(**{"bm25.k1": "fast"}), 2, "bm25.k1", "number"),
    "config-bad-enum": (cfg(**{"dataset.format": "csv"}), 2, "dataset.format", "choose one of"),
    "config-seeds-not-list": (cfg(seeds=3), 2, "seeds", "array"),
    "config-unknown-split": (cfg(**{"evaluate.splits": ["valid"]}), 2, "evaluate.splits", "valid"),
    "config-duplicate-experiments": (cfg(experiments=[{"name": "a", "method": "bm25"}] * 2), 2, "experiment names", "repeated"),
    "config-unknown-method": (cfg(experiments=[{"name": "a", "method": "colbert"}]), 2, "experiments[0].method", "choose one of"),
    "config-adore-without-documents": (cfg(experiments=[{"name": "a", "method": "adore", "documents": "nope"}]), 2, "experiments[0]", "documents"),
    "config-override-unknown-section": (cfg(experiments=[{"name": "a", "method": "bm25", "params": {"colour": {}}}]), 2, "experiments[0]", "unknown sections"),
    "config-dev-fraction": (cfg(**{"dataset.dev_fraction": 1.5}), 2, "dataset.dev_fraction", "maximum"),
    "config-dataset-path-missing": (cfg(**{"dataset.path": "/nonexistent/folder"}), 2, "/nonexistent/folder", "dataset.path"),
    "config-yaml-syntax": ({"layout": "beir", "files": {}, "raw_config": "dataset: {path: [\n"}, 2, "config.yaml", "YAML"),
    "config-not-a-mapping": ({"layout": "beir", "files": {}, "raw_config": "- just\n- a list\n"}, 2, "config.yaml", "mapping"),
    "config-doc-max-length": (cfg(**{"encoder.doc_max_length": 100000}, experiments=[{"name": "z", "method": "zeroshot"}]), 2, "encoder.doc_max_length", "512"),
    # --- model folders ---
    "model-folder-missing": ({**cfg(experiments=[{"name": "z", "method": "zeroshot"}]), "model": "missing"}, 2, "encoder.model", "fix"),
    "model-no-config": ({**cfg(experiments=[{"name": "z", "method": "zeroshot"}]), "model": "no-config"}, 2, "config.json", "fix"),
    "model-no-weights": ({**cfg(experiments=[{"name": "z", "method": "zeroshot"}]), "model": "no-weights"}, 2, "safetensors", "fix"),
    "model-pickle-weights": ({**cfg(experiments=[{"name": "z", "method": "zeroshot"}]), "model": "pickle-weights"}, 2, "safetensors", "fix"),
    "model-no-tokenizer": ({**cfg(experiments=[{"name": "z", "method": "zeroshot"}]), "model": "no-tokenizer"}, 2, "tokenizer", "fix"),
    "model-hub-id-offline": ({**cfg(experiments=[{"name": "z", "method": "zeroshot"}]), "model": "hub:nobody/no-such-model"}, 2, "encoder.model", "fix"),
    # --- datasets read by id (the `dataset` section comes from HUB[name]) ---
    "hf-tevatron-two-texts": (hub("tevatron_two_texts"), 1, "(default/train) row:2", "first given in"),
    "hf-empty-folder": (hub("hf_empty_folder"), 2, "dataset.path", "no data files"),
    "hf-path-missing": (hub("hf_path_missing"), 2, "dataset.path: ", "not a local folder"),
    "hf-loading-script": (hub("hf_loading_script"), 2, "dataset.path", "loading script"),
    "irds-cache-not-a-zip": (hub("irds_not_a_zip"), 2, "source.zip", "damaged"),
}


def write_dataset(folder: Path, layout: str, overrides: dict) -> None:
    import gzip

    files = {**(BEIR if layout == "beir" else MSMARCO), **overrides}
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            continue
        if isinstance(content, tuple):
            data = gzip.compress(content[1].encode())
            path.write_bytes(data if content[0] == "gz" else data[: len(data) // 2])
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())


def model_folder(kind: str, root: Path, tiny_model_dir: Path) -> str:
    import shutil

    if kind.startswith("hub:"):
        return kind[4:]
    folder = root / "model"
    if kind == "missing":
        return str(folder)
    shutil.copytree(tiny_model_dir, folder)
    remove = {
        "no-config": ["config.json"],
        "no-weights": ["model.safetensors"],
        "pickle-weights": ["model.safetensors"],
        "no-tokenizer": ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"],
    }[kind]
    for name in remove:
        (folder / name).unlink(missing_ok=True)
    if kind == "pickle-weights":
        (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return str(folder)


# --- datasets read by id, built offline in each library's own format (as tests/test_hub_datasets.py does) ---------
def tevatron_two_texts(root: Path) -> dict:
    """Tevatron rows in a save_to_disk folder; document 2 has one text in row 1 and another in row 2."""
    import datasets

    def passage(doc_id, text):
        return {"docid": doc_id, "title": "", "text": text}

    rows = {
        "train": [
            {"query_id": "q1", "query": "a question", "positive_passages": [passage("1", "one")],
             "negative_passages": [passage("2", "two")]},
            {"query_id": "q2", "query": "another", "positive_passages": [passage("2", "two, edited")],
             "negative_passages": []},
        ],
        "test": [{"query_id": "q3", "query": "a third", "positive_passages": [passage("1", "one")],
                  "negative_passages": []}],
    }  # fmt: skip
    folder = root / "tevatron"
    datasets.DatasetDict({split: datasets.Dataset.from_list(r) for split, r in rows.items()}).save_to_disk(str(folder))
    return {"format": "hf", "path": str(folder), "layout": "tevatron"}


def hf_empty_folder(root: Path) -> dict:
    (root / "empty").mkdir()
    return {"format": "hf", "path": str(root / "empty"), "layout": "beir"}


def hf_path_missing(root: Path) -> dict:
    return {"format": "hf", "path": str(root / "nosuch"), "layout": "beir"}


def hf_loading_script(root: Path) -> dict:
    folder = root / "scifact"
    folder.mkdir()
    (folder / "scifact.py").write_text("import datasets\n\n\nclass Scifact(datasets.GeneratorBasedBuilder): ...\n")
    (folder / "README.md").write_text("# SciFact\n")
    return {"format": "hf", "path": str(folder), "layout": "beir"}


def irds_not_a_zip(root: Path) -> dict:
    """An ir_datasets collection whose documents come from source.zip, cached, but not a zip."""
    import time

    import ir_datasets
    from ir_datasets.formats import TsvDocs
    from ir_datasets.util import Download, RequestsDownload, ZipExtract

    cached = root / "irds-cache" / "source.zip"
    cached.parent.mkdir(parents=True)
    cached.write_text("an HTML error page, not a zip\n")
    download = Download([RequestsDownload("https://example.invalid/source.zip")], cache_path=str(cached))
    name = f"hardneg-bad/{root.name}-{time.monotonic_ns()}"
    ir_datasets.registry.register(name, ir_datasets.Dataset(TsvDocs(ZipExtract(download, "docs.tsv"))))
    return {"format": "ir_datasets", "id": name}


HUB = {f.__name__: f for f in (tevatron_two_texts, hf_empty_folder, hf_path_missing, hf_loading_script, irds_not_a_zip)}


def config_for(root: Path, case: dict, tiny_model_dir: Path) -> Path:
    config = {
        "dataset": {"path": str(root / "data"), "format": case["layout"], "splits": ["train", "test"], "dev_fraction": 0},
        "evaluate": {"splits": ["test"]},
        "experiments": [{"name": "bm25", "method": "bm25"}],
    }
    for dotted, value in case.get("config", {}).items():
        *sections, key = dotted.split(".")
        target = config
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    if "model" in case:
        config.setdefault("encoder", {})["model"] = model_folder(case["model"], root, tiny_model_dir)
    if "hub" in case:
        config["dataset"] = {"splits": ["train", "test"], "dev_fraction": 0, **HUB[case["hub"]](root)}
    path = root / "config.yaml"
    path.write_text(case["raw_config"] if "raw_config" in case else yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, capsys, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    setup, code, where, words = CASES[name]
    write_dataset(tmp_path / "data", setup["layout"], setup["files"])
    config = config_for(tmp_path, setup, tiny_model_dir)
    results = tmp_path / "results"
    returned = run_plan.main(["--configfile", str(config), "--results", str(results)])
    captured = capsys.readouterr()
    logs = "".join(p.read_text() for p in results.glob("logs/**/*.log"))
    shown = captured.out + captured.err
    assert returned == code, shown
    assert where in shown and words in shown, shown
    assert "fix:" in shown, shown
    assert "Traceback" not in shown + logs
    left = {p.relative_to(results).parts[0] for p in results.iterdir()} if results.exists() else set()
    assert left <= {"logs", ".hash-cache.json"}, left


# --- `hardneg compare` and `hardneg export`: runs, qrels and options as a user gives them --------------------------
QRELS_TXT = "q1 0 d1 1\nq2 0 d2 1\nq3 0 d3 1\n"


def run_lines(*changes: tuple[int, str]) -> str:
    """Six TREC lines (q1..q3, two documents each), with line ``n`` replaced by ``text`` for each (n, text)."""
    lines = [f"q{q} Q0 {d} {rank} {3 - rank}.5 sys" for q in (1, 2, 3) for rank, d in ((1, f"d{q}"), (2, "d9"))]
    for number, text in changes:
        lines[number - 1] = text
    return "\n".join(lines) + "\n"


def compare_case(run: str, *options: str, qrels: str = QRELS_TXT, **files) -> dict:
    argv = ["compare", "run.trec", "--qrels", "qrels.txt", *options]
    return {"files": {"run.trec": run, "qrels.txt": qrels, **files}, "argv": argv}


PREPARED_QRELS = pd.DataFrame(
    {"split": ["train", "test"], "query_id": ["q1", "q2"], "doc_id": ["d1", "d2"], "relevance": [1, 1]}
)
# name -> (files and argv, exit code, where: "file:line" or the option, words the message must contain)
COMMANDS = {
    "compare-no-common-query": (
        compare_case(run_lines(*((n, f"x{n} Q0 d1 1 1.0 sys") for n in range(1, 7)))), 2, "run.trec",
        ("no query in common", "qrels.txt"),
    ),
    "compare-empty-run": (compare_case(""), 2, "run.trec", ("empty run file",)),
    "compare-blank-run": (compare_case("\n  \n"), 2, "run.trec", ("empty run file",)),
    "compare-nan-score": (compare_case(run_lines((3, "q2 Q0 d2 1 nan sys"))), 2, "run.trec:3", ("'nan'", "not a number")),
    "compare-text-score": (compare_case(run_lines((4, "q2 Q0 d9 2 abc sys"))), 2, "run.trec:4", ("'abc'", "not a number")),
    "compare-duplicate-document": (
        compare_case(run_lines() + "q1 Q0 d1 3 99 sys\n"), 2, "run.trec:7", ("'d1'", "'q1'", "line 1"),
    ),
    "compare-some-lines-without-tag": (compare_case(run_lines((5, "q3 Q0 d3 1 2.5"))), 2, "run.trec:5", ("5 columns", "tag")),
    "compare-four-columns": (compare_case(run_lines((2, "q1 Q0 d9 2"))), 2, "run.trec:2", ("4 columns",)),
    "compare-seven-columns": (compare_case(run_lines((2, "q1 Q0 d9 2 1.5 sys extra"))), 2, "run.trec:2", ("7 columns",)),
    "compare-samples-zero": (compare_case(run_lines(), "--samples", "0"), 2, "--samples", ("at least 20",)),
    "compare-samples-negative": (compare_case(run_lines(), "--samples", "-5"), 2, "--samples", ("at least 20",)),
    "compare-samples-huge": (compare_case(run_lines(), "--samples", "10000000000"), 2, "--samples", ("at most",)),
    "compare-relevance-level-zero": (compare_case(run_lines(), "--relevance-level", "0"), 2, "--relevance-level", ("at least 1",)),
    "compare-relevance-level-above-all": (
        compare_case(run_lines(), "--relevance-level", "3"), 2, "qrels.txt", ("relevance level 3", "highest is 1"),
    ),
    "compare-measure-summed": (compare_case(run_lines(), "--measures", "NumRet"), 2, "NumRet", ("not averaged",)),
    "compare-qrels-empty": (compare_case(run_lines(), qrels=""), 2, "qrels.txt", ("no judgments",)),
    "compare-qrels-short-line": (compare_case(run_lines(), qrels="q1 0 d1 1\nq2 d2\n"), 2, "qrels.txt:2", ("2 columns",)),
    "compare-qrels-conflicting": (
        compare_case(run_lines(), qrels="q1 0 d1 1\nq1 0 d1 0\n"), 2, "qrels.txt:2", ("on line 1",),
    ),
    "compare-split-missing": (
        {"files": {"run.trec": run_lines(), "prepared/qrels.parquet": PREPARED_QRELS},
         "argv": ["compare", "run.trec", "--qrels", "prepared", "--split", "nosuch"]},
        2, "qrels.parquet", ("'nosuch'", "['test', 'train']"),
    ),  # fmt: skip
    "run-configfile-missing": (
        {"files": {}, "argv": ["run", "-n", "--configfile", "nothere.yaml"]}, 2, "nothere.yaml", ("not found",),
    ),
    "run-configfile-yaml-error": (
        {"files": {"bad.yaml": "dataset: {path: data\nexperiments: [\n"}, "argv": ["run", "-n", "--configfile=bad.yaml"]},
        2, "bad.yaml:", ("not valid YAML",),
    ),
    "export-destination-is-a-file": (
        {"files": {"dest": "a file\n"}, "argv": ["export", "dest", "--configfile", "config.yaml"]}, 2, "dest",
        ("not a folder",),
    ),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_command_input(name, tmp_path, capsys, monkeypatch, tiny_model_dir):
    from stages.pipeline.command import main

    setup, code, where, words = COMMANDS[name]
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "data", "beir", {})
    config_for(tmp_path, cfg(), tiny_model_dir)
    for file, content in setup["files"].items():
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, pd.DataFrame):
            content.to_parquet(tmp_path / file)
        else:
            (tmp_path / file).write_text(content)
    returned = main(setup["argv"])
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert returned == code, shown
    assert where in shown and all(word in shown for word in words), shown
    assert "fix:" in shown and "Traceback" not in shown, shown


def test_case_count():
    assert len(CASES) >= 85 and len(COMMANDS) >= 20
