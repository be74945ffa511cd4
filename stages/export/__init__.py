"""Stage `export`: the trained retriever as one sentence-transformers model, for use outside the pipeline
(`python -m stages.export`).

The artifact folder is the model: ``SentenceTransformer(folder)`` loads it, ``encode_query`` runs the query route
(ADORE's query encoder, or the shared encoder truncated at query_max_length) and ``encode_document`` the document
route (the encoder that filled the index), each giving the embeddings the pipeline computed (float32 safetensors,
no pickles). README.md is its model card (`card`). Optional: ``onnx/query.onnx`` and ``onnx/document.onnx``
(torch.onnx), and an upload of the folder to the Hugging Face Hub.

Inputs: optional ``documents`` (a training artifact with model/; otherwise ``model``, the base encoder), optional
``queries`` (an ADORE artifact with model/), optional ``score_<split>`` (score artifacts: the card's metrics).

Importing the package imports none of its modules: `stage` holds the parameters, the work and ``main``.
"""

VERSION = 2
"""The package's code version, part of every export artifact's key: raise it when any module here changes what the
stage writes."""
