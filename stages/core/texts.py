"""The text of a corpus row, one rule for every stage that encodes documents (pandas only: the export env has no
pyarrow, the tokenize stage's workers no torch)."""

from __future__ import annotations

import pandas as pd


def document_texts(corpus: pd.DataFrame) -> list[str]:
    """title + " " + text, stripped (the BEIR / sentence-transformers convention)."""
    return (corpus["title"].fillna("") + " " + corpus["text"].fillna("")).str.strip().tolist()
