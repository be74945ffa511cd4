"""`python -m stages.ml.stats`: its help, and errors (exit 2, no traceback) for a wrong path or an unscored measure."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from stages.ml.stats import main


@pytest.fixture
def scores(tmp_path):
    for name, values in (("a", [1.0, 0.5, 1.0]), ("b", [0.0, 0.5, 0.0])):
        folder = tmp_path / name
        folder.mkdir()
        frame = pd.DataFrame({"query_id": ["q1", "q2", "q3"] * 2, "value": values * 2})
        frame["measure"] = ["nDCG@10"] * 3 + ["MRR@10"] * 3
        frame.to_parquet(folder / "per_query.parquet")
    return tmp_path / "a", tmp_path / "b"


def test_help_describes_the_command_and_its_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "Paired randomization test between two `score` artifacts" in text and "p-value" in text
    for argument in ("score_a", "score_b", "a score artifact folder", "--measure", "default: nDCG@10", "--samples"):
        assert argument in text
    assert "example:" in text and "results/runs/" in text


def test_a_wrong_path_names_it_and_the_fix(scores, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main([str(scores[0]), str(missing)]) == 2
    error = capsys.readouterr().err
    assert f"{missing}: no such folder" in error and "fix: give a score artifact" in error and "Traceback" not in error
    assert main([str(scores[0]), str(tmp_path)]) == 2  # a folder, but not a score artifact
    assert f"{tmp_path}: not a score artifact (no per_query.parquet)" in capsys.readouterr().err


def test_an_unscored_measure_lists_the_measures_present(scores, capsys):
    assert main([*map(str, scores), "--measure", "R@100"]) == 2
    error = capsys.readouterr().err
    assert "measure 'R@100' is not among the scored measures" in error and "['MRR@10', 'nDCG@10']" in error


def test_a_comparison_prints_json(scores, capsys):
    assert main([*map(str, scores), "--measure", "MRR@10", "--samples", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["measure"] == "MRR@10" and result["queries"] == 3 and result["difference"] == pytest.approx(2 / 3)
