"""Shared encoder code: load, run and save a bi-encoder (a Hugging Face transformer + pooling + optional L2 norm).

Models are read and written as safetensors only (never pickles). A saved encoder is a Hugging Face model folder
plus ``encoder.json`` ({pooling, normalize}) and the sentence-transformers files, so that
``SentenceTransformer(folder)`` loads it and gives the same embeddings.

Pooling and normalisation "auto" read, in order: our ``encoder.json``; the sentence-transformers files
(``modules.json`` listing a Normalize module, ``1_Pooling/config.json``); else mean pooling without normalisation.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.artifacts import MODEL_SUBDIR, SUMMARY
from ..core.errors import ArtifactError, ConfigError
from ..core.model_source import resolve_model
from ..core.texts import document_texts  # noqa: F401 (torch-free, for the tokenize stage's workers; named here too)

log = logging.getLogger("stages.ml.models")

ENCODER_JSON = "encoder.json"
"""Training artifacts keep their encoder in this subfolder."""
POOLINGS = ("mean", "cls")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TOKENIZE_CHUNK = 16384
"""Texts tokenized (and sent to the device) at a time."""
T = TypeVar("T")
TokenChunk = tuple[int, np.ndarray, np.ndarray]
"""(first row, token ids of the rows one after another (sum of lengths,) int32/int64, tokens per row) of
consecutive rows."""


def model_spec(default: str, inputs: Mapping[str, Path]) -> str:
    """The encoder a stage uses: the ``model`` input (a training artifact's model/ folder) wins over ``default``."""
    if "model" not in inputs:
        return default
    folder = Path(inputs["model"]) / MODEL_SUBDIR
    if not folder.is_dir():
        raise ArtifactError(
            f"the 'model' input has no {MODEL_SUBDIR}/ folder", path=inputs["model"], fix="pass a training artifact"
        )
    return str(folder)


def default_autocast(device: torch.device) -> str | None:
    return "bf16" if device.type == "cuda" else None


class Encoder(torch.nn.Module):
    """A transformer whose token states are pooled (mean over the mask, or CLS) and optionally L2-normalised."""

    def __init__(self, model: torch.nn.Module, tokenizer, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}", fix=f"use one of {POOLINGS} or 'auto'")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        return self._pool(hidden, attention_mask)

    def forward_packed(self, ids: np.ndarray | torch.Tensor, lengths: np.ndarray) -> torch.Tensor:
        """`forward` on texts packed into one row of tokens, with gradient: (texts, dim) float32, pooled and
        normalised as `forward` gives on the same texts padded (in eval mode; in training the dropout masks
        differ, and on the flash kernel attention-probability dropout is off: see `stages.ml.packed`).

        ``ids``: the texts' token ids one after another (numpy or a CPU tensor, pinned or not; int32 or int64),
        ``lengths``: tokens per text as a host array (`token_chunk` gives both). Nothing is read back from the
        device: the longest text and the token count come from ``lengths``, the ids go over asynchronously (through
        pinned memory on CUDA). Use it where `supports_packed_training` says so; elsewhere it is correct (the
        attention pads the heads) but slower than `forward` on length-sorted padded batches.
        """
        from .packed import PackedChunk, packed_implementation, position_start

        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if len(ids) != int(lengths.sum()):
            raise ValueError(f"{len(ids)} packed ids but lengths sum to {int(lengths.sum())}")
        if len(lengths) == 0:
            return torch.zeros((0, self.dim), device=self.device)
        if lengths.min() < 1:
            raise ValueError("every packed text needs at least one token")
        chunk = PackedChunk(ids, lengths, self.device, position_start(self.model))
        input_ids, positions, packing = chunk.batch(0, len(lengths))
        with packed_implementation(self.model):
            hidden = self._packed_hidden(input_ids, positions, packing).float()  # (tokens, dim)
        pooled = packing.first(hidden) if self.pooling == "cls" else packing.mean(hidden)
        return self._head(pooled)

    def supports_packed_training(self, autocast: str | None = "auto") -> bool:
        """Whether `forward_packed` pays off for training here: a model type `stages.ml.packed` knows, on CUDA, computing
        in bf16/fp16 (``autocast`` 'bf16'/'fp16', or the weights' dtype with None/'none'; 'auto': bf16 on CUDA) and
        torch's variable-length flash attention available. Such training has no attention-probability dropout."""
        from .packed import packing_pays

        if autocast == "auto":
            autocast = default_autocast(self.device)
        return packing_pays(self.model, AUTOCAST_DTYPES.get(autocast, next(self.parameters()).dtype))

    def _packed_hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, packing) -> torch.Tensor:
        """(tokens, dim) last hidden states of a packed row (under `packed_implementation`)."""
        return self.model(
            input_ids=input_ids,
            position_ids=positions,
            token_type_ids=torch.zeros_like(input_ids),
            packing=packing,
        ).last_hidden_state[0]

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(texts, tokens, dim) float states and (texts, tokens) mask -> (texts, dim) float32."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return self._head(pooled)

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(texts, dim) pooled states -> float32, L2-normalised if asked."""
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled.float()

    def for_inference(self, autocast: str | None = "auto") -> str | None:
        """Ready this encoder for encoding only, and return the autocast to encode with. On CUDA with bf16/fp16
        ('auto': bf16) the weights are cast to it and autocast is off: 1.3x the throughput of float32 weights under
        autocast (its casts and float32 layer norms weigh a lot in a 384-wide model; see the README's Performance),
        cosine > 0.9999 to them. Elsewhere nothing changes. Not for an encoder that trains afterwards."""
        if autocast == "auto":
            autocast = default_autocast(self.device)
        if self.device.type == "cuda" and autocast in AUTOCAST_DTYPES:
            self.to(AUTOCAST_DTYPES[autocast])
            return "none"
        return autocast

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """Padded to the longest text of the batch, truncated to ``max_length`` tokens."""
        batch = self.tokenizer(
            [str(t).strip() for t in texts],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def token_lengths(self, texts: list[str], max_length: int) -> np.ndarray:
        """Tokens per text after truncation (special tokens included), i.e. the non-padding tokens encoded."""
        return self._token_chunk(texts, max_length)[1] if texts else np.zeros(0, dtype=np.int64)

    def encode(self, texts: list[str], max_length: int, **options) -> np.ndarray:
        """Embeddings (len(texts), dim) float32 in input order; see `encode_counted` for the options."""
        return self.encode_counted(texts, max_length, **options)[0]

    def encode_counted(
        self,
        texts: list[str],
        max_length: int,
        chunk_size: int = TOKENIZE_CHUNK,
        **options,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (len(texts), dim) float32 in input order, tokens per text after truncation).

        `encode_tokens` over chunks of ``chunk_size`` texts that its worker thread tokenizes ahead of the GPU (as
        numpy arrays, no Python lists); ``options`` are its options.
        """
        starts = range(0, len(texts), chunk_size)
        chunks = ((s, *self._token_chunk(texts[s : s + chunk_size], max_length)) for s in starts)
        return self.encode_tokens(chunks, len(texts), **options)

    @torch.inference_mode()
    def encode_tokens(
        self,
        chunks: Iterable[TokenChunk],
        rows: int,
        batch_size: int = 128,
        device: str | torch.device | None = None,
        autocast: str | None = "auto",
        progress: bool = True,
        desc: str = "encode",
        sink: Callable[[int, np.ndarray], None] | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Embeddings and token counts of ``rows`` texts given as token chunks (first row, ids, lengths). With a
        ``sink``, each chunk's embeddings (float32) go to ``sink(first row, rows)`` in order as they come back, and
        none are kept (None instead of the embeddings).

        A worker thread produces the chunks (tokenizing or reading them) up to two ahead of the GPU. Each chunk goes
        to the device in one copy and its results come back in one. On a GPU in bf16/fp16, models that
        `stages.ml.packed` knows run padding-free: ``batch_size`` consecutive texts packed into one row of tokens.
        Otherwise batches hold texts of similar length (longest first), cut to their longest. ``device`` moves the
        encoder there first (default: where it is). ``autocast``: 'bf16', 'fp16', None/'none' (off), or 'auto'
        (bf16 on CUDA, off on CPU).
        """
        from .packed import packed_implementation, packing_pays

        if device is not None:
            self.to(device)
        device = self.device
        if autocast == "auto":
            autocast = default_autocast(device)
        if autocast not in (None, "none", *AUTOCAST_DTYPES):
            raise ConfigError(f"unknown autocast {autocast!r}", fix="use 'auto', 'bf16', 'fp16' or 'none'")
        dtype, enabled = AUTOCAST_DTYPES.get(autocast, torch.bfloat16), autocast in AUTOCAST_DTYPES
        was_training = self.training
        self.eval()
        embeddings = None if sink else np.empty((rows, self.dim), dtype=np.float32)
        sink = sink or (lambda start, block: embeddings.__setitem__(slice(start, start + len(block)), block))
        lengths = np.zeros(rows, dtype=np.int64)
        bar = tqdm(total=rows, desc=desc, unit="text", disable=not progress)
        packed = packing_pays(self.model, dtype if enabled else next(self.parameters()).dtype)
        encode_chunk = self._packed_chunk if packed else self._padded_chunk
        pending = None  # the previous chunk's results on their way to the host
        with packed_implementation(self.model) if packed else nullcontext():
            for start, ids, chunk_lengths in prefetched(chunks):
                with torch.autocast(device.type, dtype=dtype, enabled=enabled):
                    chunk = encode_chunk(ids, chunk_lengths, batch_size, bar)
                # waiting for a chunk's results only once the next one is queued keeps the GPU busy in between
                if pending is not None:
                    pending.deliver(sink)
                pending = HostCopy(start, chunk.float())
                lengths[start : start + len(chunk_lengths)] = chunk_lengths
        if pending is not None:
            pending.deliver(sink)
        bar.close()
        self.train(was_training)
        return embeddings, lengths

    def _packed_chunk(self, ids: np.ndarray, lengths: np.ndarray, batch_size: int, bar) -> torch.Tensor:
        from .packed import PackedChunk, position_start

        chunk, outputs = PackedChunk(ids, lengths, self.device, position_start(self.model)), []
        for start in range(0, len(lengths), batch_size):
            stop = min(start + batch_size, len(lengths))
            input_ids, positions, packing = chunk.batch(start, stop)
            hidden = self._packed_hidden(input_ids, positions, packing)
            hidden = packing.pad(hidden.float())  # (texts, longest, dim) with zeros on padding
            outputs.append(self._pool(hidden, packing.key_mask()))
            bar.update(stop - start)
        return torch.cat(outputs)

    def _padded_chunk(self, ids: np.ndarray, lengths: np.ndarray, batch_size: int, bar) -> torch.Tensor:
        device = self.device
        # the chunk's ids go to the device at once; batches are slices of it (no per-batch copies): a
        # host-to-device copy per batch would wait for the GPU to finish the previous batch
        ids_on_device = torch.from_numpy(padded_tokens(ids, lengths)).to(device)
        lengths_on_device = torch.from_numpy(lengths).to(device)
        positions = torch.arange(ids_on_device.shape[1], device=device)
        order = np.argsort(-lengths, kind="stable")
        order_on_device = torch.from_numpy(order).to(device)
        outputs = []
        for b in range(0, len(order), batch_size):
            batch_rows = order_on_device[b : b + batch_size]
            longest = int(lengths[order[b]])
            mask = (positions[:longest] < lengths_on_device[batch_rows, None]).long()
            outputs.append(self(ids_on_device[batch_rows, :longest], mask))
            bar.update(len(batch_rows))
        return torch.cat(outputs)[torch.from_numpy(np.argsort(order)).to(device)]

    def _token_chunk(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        return token_chunk(self.tokenizer, texts, max_length)


class TokenCache:
    """`Encoder.tokenize` for texts tokenized once, up front (`add`, or `add_tokenized` from a `tokenize`
    artifact): a step's batch is then numpy gathers of their
    ids, with no tokenizer call and little Python, so that the trainers' host side keeps up with the GPU (tokenizing
    256 queries and 512-1,536 passages a step on a thread competes for the GIL with the thread feeding the GPU:
    ~0.15 s a step on the H200 box, twice the model's step). The same ``input_ids`` and ``attention_mask`` as
    `Encoder.tokenize`; texts it has not seen are tokenized as usual."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._tables: dict[int, tuple[dict[str, int], np.ndarray, np.ndarray]] = {}
        """max_length -> (row of each text, ids of the texts one after another (int32), where each starts)."""

    def add(self, texts: Iterable[str], max_length: int, desc: str = "tokenize") -> int:
        """Tokenize ``texts`` (truncated to ``max_length``) once; returns how many distinct texts were added."""
        row_of = self._tables.get(max_length, ({},))[0]
        new = [t for t in dict.fromkeys(texts) if t not in row_of]
        pieces = [
            token_chunk(self.tokenizer, new[start : start + TOKENIZE_CHUNK], max_length)
            for start in tqdm(range(0, len(new), TOKENIZE_CHUNK), desc=desc, unit="chunk", disable=len(new) < 10**5)
        ]
        ids = np.concatenate([np.zeros(0, np.int32)] + [i.astype(np.int32) for i, _ in pieces])
        lengths = np.concatenate([np.zeros(0, np.int64)] + [n for _, n in pieces])
        return self.add_tokenized(new, ids, np.concatenate([[0], np.cumsum(lengths)]), max_length)

    def add_tokenized(self, texts: list[str], ids: np.ndarray, offsets: np.ndarray, max_length: int) -> int:
        """Texts already tokenized at ``max_length`` (a `tokenize` artifact's rows: their ids one after another and
        ``len(texts) + 1`` offsets); texts seen before keep their ids. Returns how many distinct texts were added."""
        row_of, known, starts = self._tables.get(max_length, ({}, np.zeros(0, np.int32), np.zeros(1, np.int64)))
        first = len(row_of)
        keep = np.zeros(len(texts), bool)  # the first row of each text not seen before
        for position, text in enumerate(texts):
            if text not in row_of:
                row_of[text], keep[position] = len(row_of), True
        lengths = np.diff(offsets)[keep]
        gathered = ids[offsets[0] : offsets[-1]] if keep.all() else gather_rows(ids, offsets[:-1][keep], lengths)
        self._tables[max_length] = (
            row_of,
            np.concatenate([known, gathered.astype(np.int32)]),
            np.concatenate([starts, starts[-1] + np.cumsum(lengths)]),
        )
        return len(row_of) - first

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        row_of, ids, offsets = self._tables.get(max_length, ({}, None, None))
        rows = np.fromiter((row_of.get(t, -1) for t in texts), dtype=np.int64, count=len(texts))
        if ids is None or (rows < 0).any():
            flat, lengths = token_chunk(self.tokenizer, list(texts), max_length) if len(texts) else (rows, rows)
        else:
            lengths = offsets[rows + 1] - offsets[rows]
            flat = gather_rows(ids, offsets[rows], lengths).astype(np.int64)
        mask = np.arange(int(lengths.max(initial=0)))[None, :] < lengths[:, None]
        padded = np.full(mask.shape, self.tokenizer.pad_token_id or 0, dtype=np.int64)
        padded[mask] = flat
        return {"input_ids": torch.from_numpy(padded), "attention_mask": torch.from_numpy(mask.astype(np.int64))}


def gather_rows(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The rows of ``ids`` that start at ``starts`` and have ``lengths``, one after another."""
    before = np.cumsum(lengths) - lengths
    return ids[np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))]


class HostCopy:
    """Rows from ``start`` copied from the device to the host without waiting (pinned memory on CUDA)."""

    def __init__(self, start: int, rows: torch.Tensor):
        self.start, self.event = start, None
        if rows.is_cuda:
            self.rows = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
            self.rows.copy_(rows, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.rows = rows

    def deliver(self, sink: Callable[[int, np.ndarray], None]) -> None:
        """``sink(start, rows)`` once the copy is done."""
        if self.event is not None:
            self.event.synchronize()
        sink(self.start, self.rows.numpy())


def prefetched(
    items: Iterable[T], ahead: int = 2, name: str = "prefetch", initializer: Callable[[], None] | None = None
) -> Iterator[T]:
    """``items`` made by a worker thread (``name``, set up by ``initializer``), up to ``ahead`` of them before the
    consumer asks. Closing the generator waits for the items being made; an item's error is raised at that item."""
    iterator, done = iter(items), object()
    with ThreadPoolExecutor(1, name, initializer) as pool:  # one worker: the next() calls run in order
        pending = [pool.submit(next, iterator, done) for _ in range(ahead)]
        while (item := pending.pop(0).result()) is not done:
            pending.append(pool.submit(next, iterator, done))
            yield item


def token_chunk(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the texts one after another, int64, tokens per text): special tokens included, truncated to
    max_length."""
    encoded = tokenizer(
        [str(t).strip() for t in texts],
        padding="longest",
        truncation=True,
        max_length=max_length,
        return_token_type_ids=False,
        return_tensors="np",
    )
    mask = encoded["attention_mask"].astype(bool)
    return encoded["input_ids"][mask].astype(np.int64), mask.sum(axis=1).astype(np.int64)


def padded_tokens(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Ids of texts one after another -> (texts, longest) int64, padded with 0 after each text."""
    padded = np.zeros((len(lengths), int(lengths.max(initial=0))), dtype=np.int64)
    padded[np.arange(padded.shape[1]) < lengths[:, None]] = ids
    return padded


def tokenizer_fingerprint(tokenizer) -> str:
    """A short sha256 of what turns text into ids (vocabulary, normaliser, pre-tokeniser, special tokens), not of
    the truncation or padding state: two encoders with equal fingerprints tokenize every text alike."""
    import hashlib

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def _parse_normalize(value: bool | str) -> bool | None:
    """True / False, or None for 'auto'."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ConfigError(f"normalize must be true, false or 'auto', not {value!r}")


def _model_file(path: str, name: str) -> Path | None:
    """A file of a model folder (`resolve_model` gives one, also for Hub ids); None when it does not exist."""
    file = Path(path) / name
    return file if file.is_file() else None


def saved_head(path: str) -> tuple[str, bool]:
    """(pooling, normalize) recorded with a model: encoder.json, else sentence-transformers files, else mean/False."""
    ours = _model_file(path, ENCODER_JSON)
    if ours is not None:
        settings = json.loads(ours.read_text())
        return settings["pooling"], bool(settings["normalize"])
    modules_file = _model_file(path, "modules.json")
    if modules_file is None:
        return "mean", False
    modules = json.loads(modules_file.read_text())
    normalize = any(m["type"].endswith("Normalize") for m in modules)
    pooling = "mean"
    for module in modules:
        if module["type"].endswith("Pooling"):
            config_file = _model_file(path, f"{module['path']}/config.json")
            config = json.loads(config_file.read_text()) if config_file else {}
            if config.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif not config.get("pooling_mode_mean_tokens", True):
                raise ConfigError(
                    "the model's sentence-transformers pooling is neither mean nor CLS",
                    path=config_file,
                    fix="set pooling to 'mean' or 'cls' explicitly",
                )
    return pooling, normalize


def load_encoder(spec: str | Path, pooling: str = "auto", normalize: bool | str = "auto") -> Encoder:
    """An Encoder with float32 parameters whatever the checkpoint's dtype; 'auto' keeps the model's own head."""
    from transformers import AutoModel

    path = resolve_model(str(spec))  # a folder: a Hub id's cached snapshot, never the network
    if pooling not in (*POOLINGS, "auto"):
        raise ConfigError(f"unknown pooling {pooling!r}", fix=f"use one of {POOLINGS} or 'auto'")
    normalize_flag = _parse_normalize(normalize)
    try:
        model = AutoModel.from_pretrained(
            path, dtype=torch.float32, use_safetensors=True, trust_remote_code=False, local_files_only=True
        )
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot load the model folder: {error}",
            path=path,
            fix="a model folder needs config.json, model.safetensors and the tokenizer files",
        ) from None
    model.float()
    auto_pooling, auto_normalize = saved_head(path)
    encoder = Encoder(
        model,
        tokenizer,
        pooling=auto_pooling if pooling == "auto" else pooling,
        normalize=auto_normalize if normalize_flag is None else normalize_flag,
    )
    log.info("loaded %s (pooling %s, normalize %s)", path, encoder.pooling, encoder.normalize)
    return encoder


def load_tokenizer(spec: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(str(spec)), trust_remote_code=False, local_files_only=True)


def save_encoder(encoder: Encoder, out_dir: Path, max_seq_length: int = 256) -> None:
    """Safetensors weights, tokenizer, encoder.json and the sentence-transformers files (no pickles)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder.model.save_pretrained(out_dir)  # safetensors is the (only) format of recent transformers
    if not (out_dir / "model.safetensors").is_file() and not (out_dir / "model.safetensors.index.json").is_file():
        raise ArtifactError("save_pretrained wrote no safetensors weights", path=out_dir)
    encoder.tokenizer.save_pretrained(out_dir)
    write_json(out_dir / ENCODER_JSON, {"pooling": encoder.pooling, "normalize": encoder.normalize})
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if encoder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    write_json(out_dir / "modules.json", modules)
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    write_json(
        out_dir / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": encoder.dim,
            "pooling_mode_cls_token": encoder.pooling == "cls",
            "pooling_mode_mean_tokens": encoder.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})


def write_json(path: Path, value) -> None:
    Path(path).write_text(json.dumps(value, indent=2) + "\n")


def check_tokens(artifact: Path, encoder, max_length: int, rows: int) -> None:
    """The `tokenize` artifact holds this encoder's tokenization of the corpus's ``rows`` rows at this length."""
    summary = json.loads((artifact / SUMMARY).read_text())
    mine = {"tokenizer": tokenizer_fingerprint(encoder.tokenizer), "max_length": max_length}
    theirs = {key: summary[key] for key in mine}
    if mine != theirs or summary["rows"] != rows:
        raise ArtifactError(
            f"the tokens input does not fit this encoder: it has {theirs} for {summary['rows']} rows, the encoder "
            f"needs {mine} for {rows}",
            path=artifact,
            fix="tokenize with the encoder's own tokenizer and doc_max_length (the plan does this unless an "
            "experiment's encoder has a tokenizer of its own)",
        )
