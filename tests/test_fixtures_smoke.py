import pandas as pd


def test_prepared_slice_has_three_splits(prepared):
    queries = pd.read_parquet(prepared / "queries.parquet")
    assert set(queries["split"]) == {"train", "dev", "test"}
    assert (queries["split"] == "test").sum() == 20


def test_tiny_model_loads(tiny_model_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir)
    assert model.config.hidden_size == 32
