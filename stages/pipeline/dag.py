"""The experiment DAG: which stage runs with which params on which inputs, and the content key of each artifact.

The Snakefile builds one `Plan` from the validated config; every rule is generic over ``{key}`` and asks the plan for
its inputs and params. Experiments that share upstream work get the same nodes (same keys), so it runs once.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

from ..core.artifacts import DEV_SPLIT, SUMMARY, TRAIN_SPLIT, shard_inputs
from ..core.dataset_formats import dataset_format, with_negatives
from ..core.errors import ConfigError
from ..ml.index_kinds import KINDS, exact_kind
from ..core.model_source import ModelSource, check_model_folder, locate_model, position_limit
from ..ml.negative_samplers import SAMPLERS
from .config import validate_config
from .costs import cost_nodes
from .methods import DOCUMENT_ENCODERS, METHODS
from ..core.store import HASH_CACHE, HashCache, artifact_key, raw_key, set_aside_damaged, stage_version

RESULTS = Path("results")
NOT_OVERRIDABLE = {"dataset", "evaluate", "experiments"}


def instances(experiment: Mapping[str, Any], seeds: list[int]) -> list[tuple[str, int | None]]:
    """(name, seed) of each run of an experiment: trained methods once per seed, as ``<name>/seed-<seed>``."""
    if not METHODS[experiment["method"]].trained:
        return [(experiment["name"], None)]
    return [(f"{experiment['name']}/seed-{seed}", seed) for seed in experiment.get("seeds", seeds)]


class RawFile:
    """A dataset or model file outside the store; its key is its content hash."""

    def __init__(self, path: Path, cache: HashCache):
        self.path = Path(path)
        self.key = raw_key(self.path, cache)


class Node:
    """One artifact: a stage run with fixed params on fixed inputs."""

    def __init__(self, stage: str, params: Mapping[str, Any], inputs: Mapping[str, "Node | RawFile"]):
        self.stage = stage
        self.params = json.loads(json.dumps(params))  # plain JSON values, detached from the config
        self.inputs = dict(inputs)
        self.key = artifact_key(stage, stage_version(stage), self.params, {n: i.key for n, i in self.inputs.items()})

    def path(self, results: Path = RESULTS) -> Path:
        return Path(results) / self.stage / self.key

    def input_paths(self, results: Path = RESULTS) -> dict[str, str]:
        return {
            name: str(item.path if isinstance(item, RawFile) else item.path(results)) for name, item in self.inputs.items()
        }


class Plan:
    def __init__(self, config: Mapping[str, Any], results: Path = RESULTS, dry_run: bool = False):
        self.config = config
        self.results = Path(results)
        self.cache = HashCache(self.results / HASH_CACHE)
        self._nodes: dict[tuple[str, str], Node] = {}
        self.models: dict[str, tuple[ModelSource, int | None]] = {}
        self.experiments: dict[str, dict[str, Node]] = {}
        self._prepared: Node | None = None
        names = [e["name"] for e in config["experiments"]]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(
                f"experiment names must be unique; repeated: {duplicates}", fix="give each experiment its own name"
            )
        if "report" in names:
            raise ConfigError("'report' is reserved for the results report", fix="rename that experiment")
        self._check_splits()
        self.rows: list[dict[str, Any]] = []
        self.exports: list[Node] = []
        for index, experiment in enumerate(config["experiments"]):
            for instance, seed in instances(experiment, config["seeds"]):
                self.experiments[instance] = self._build(index, experiment, seed)
        self.report = self._report()
        # a damaged artifact is never read: moved aside (only reported in a dry run) and a target, so it is rebuilt
        self.set_aside = set_aside_damaged([node.path(self.results) for node in self.nodes()], self.cache, dry_run)
        self.cache.save()

    # --- lookups used by the Snakefile -------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def node(self, stage: str, key: str) -> Node:
        try:
            return self._nodes[(stage, key)]
        except KeyError:
            raise ConfigError(f"no experiment in the config makes {stage} artifact {key}") from None

    def targets(self) -> list[str]:
        """The report, which depends on every score, the exports, and any artifact set aside as damaged."""
        nodes = [self.report, *self.exports]
        return [str(node.path(self.results)) for node in nodes] + [str(path) for path in self.set_aside]

    def pointers(self) -> dict[str, dict[str, Path]]:
        """``results/runs/<experiment>/<role>`` and ``results/runs/report``."""
        nodes = self.pointers_nodes()
        return {name: {role: n.path(self.results) for role, n in roles.items()} for name, roles in nodes.items()}

    def recorded_warnings(self) -> list[str]:
        """The warnings the artifacts made so far recorded (dropped judgments, empty documents, skipped queries, ...),
        a line each naming the stage and key: shown at the end of every run, where a user looks, not only in logs."""
        lines = []
        for node in self.nodes():
            summary = node.path(self.results) / SUMMARY
            if summary.is_file():
                warnings = json.loads(summary.read_text()).get("warnings", [])
                lines += [f"warning: {node.stage} {node.key}: {message}" for message in warnings]
        return lines

    def pointers_nodes(self) -> dict[str, dict[str, Node]]:
        return {**self.experiments, "": {"report": self.report}}

    # --- building ----------------------------------------------------------------------------------------------
    def _add(self, stage: str, params: Mapping[str, Any], inputs: Mapping[str, Node | RawFile]) -> Node:
        node = Node(stage, params, inputs)
        return self._nodes.setdefault((stage, node.key), node)

    def model_source(self, spec: str, setting: str = "encoder.model") -> tuple[ModelSource, int | None]:
        """The base model, found offline (once per spec), and the most tokens it takes; ``setting`` names it."""
        if spec not in self.models:
            source = locate_model(spec, setting)
            check_model_folder(source.folder, setting)  # before any stage runs, not after tokenizing the corpus
            self.models[spec] = (source, position_limit(source.folder))
        return self.models[spec]

    def _section(self, index: int, experiment: Mapping[str, Any], name: str) -> dict:
        """A stage's config section with the experiment's overrides applied."""
        section = copy.deepcopy(self.config.get(name, {}))
        overrides = experiment.get("params", {})
        sections = sorted(k for k, v in self.config.items() if isinstance(v, dict) and k not in NOT_OVERRIDABLE)
        unknown_sections = sorted(set(overrides) - set(sections))
        if unknown_sections:
            raise ConfigError(
                f"experiments[{index}] ({experiment['name']}): params names unknown sections {unknown_sections}",
                fix=f"override keys of: {sections}",
            )
        for key, value in overrides.get(name, {}).items():
            if key not in section:
                raise ConfigError(
                    f"experiments[{index}] ({experiment['name']}): params.{name}.{key} is not a {name} parameter",
                    fix=f"{name} parameters are: {sorted(section)}",
                )
            section[key] = value
        if overrides.get(name):
            merged = copy.deepcopy(dict(self.config))
            merged[name] = section
            validate_config(merged)
        return section

    def _prepare(self) -> Node:
        """The dataset's prepare node (located once: a dataset read by id is checked to be in its cache)."""
        if self._prepared is None:
            self._prepared = self._add("prepare", *self._dataset_source())
        return self._prepared

    def _dataset_source(self) -> tuple[dict[str, Any], dict[str, RawFile]]:
        """The prepare params and inputs: a folder's files, or the ids and revisions of a dataset read by id."""
        dataset = self.config["dataset"]
        names = ("format", "splits", "dev_fraction", "dev_source", "seed", "unknown_ids", "empty_documents")
        params = {name: dataset[name] for name in names}
        source = dataset_format(dataset["format"]).locate(dataset)
        return params | source.params, {name: RawFile(path, self.cache) for name, path in source.inputs.items()}

    def _build(self, index: int, experiment: Mapping[str, Any], seed: int | None) -> dict[str, Node]:
        chain = Chain(self, index, experiment, seed)
        for split in experiment.get("splits", self.config["evaluate"]["splits"]):
            chain.score(split)
            self.rows.append({"experiment": experiment, "seed": seed, "split": split, "roles": chain.roles})
        if experiment.get("export"):
            self.exports.append(chain.export())
        return chain.roles

    def _report(self) -> Node:
        """One report over every score, with the training artifacts of each chain for times and loss curves."""
        section = self.config["report"]
        reference = section["reference"]
        if reference == "auto":
            stars = [e["name"] for e in self.config["experiments"] if e["method"] == "star" and not e.get("params")]
            reference = stars[0] if stars else ""
        inputs: dict[str, Node] = {}
        names: dict[str, str] = {}

        def input_name(node: Node, kind: str) -> str:
            if node.key not in names:
                names[node.key] = f"{kind}_{sum(1 for n in names.values() if n.startswith(kind))}"
                inputs[names[node.key]] = node
            return names[node.key]

        rows = []
        for row in self.rows:
            roles, split = row["roles"], row["split"]
            trained = [n for role, n in roles.items() if n.stage.startswith("train_") and not role.startswith("warmup-")]
            rows.append(
                {
                    "variant": row["experiment"]["name"],
                    "method": row["experiment"]["method"],
                    "seed": row["seed"],
                    "split": split,
                    "index": roles["index"].params["kind"] if "index" in roles else "",
                    "score": input_name(roles[f"score-{split}"], "score"),
                    "train": [input_name(node, "train") for node in trained],
                    "costs": [
                        {"input": input_name(node, "artifact"), "stage": node.stage, "shared": shared}
                        for node, shared in cost_nodes(roles, split, row["experiment"]["method"])
                    ],
                }
            )
        params = {
            "rows": rows,
            "reference": reference,
            "measures": section["measures"],
            "bootstrap_samples": self.config["score"]["bootstrap_samples"],
            "seed": self.config["score"]["seed"],
        }
        return self._add("report", params, inputs)

    def documents_experiment(self, index: int, experiment: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]]:
        """The experiment an ADORE experiment takes its document encoder from, with its position."""
        name = experiment.get("documents")
        found = [(i, e) for i, e in enumerate(self.config["experiments"]) if e["name"] == name]
        dense = [e["name"] for e in self.config["experiments"] if e["method"] in DOCUMENT_ENCODERS]
        if not found or found[0][1]["method"] not in DOCUMENT_ENCODERS:
            raise ConfigError(
                f"experiments[{index}] ({experiment['name']}): adore needs 'documents' naming a "
                f"{', '.join(DOCUMENT_ENCODERS[:-1])} or {DOCUMENT_ENCODERS[-1]} experiment; got {name!r}",
                fix=f"set documents to one of {dense}",
            )
        return found[0]

    def _check_splits(self) -> None:
        dataset = self.config["dataset"]
        available = set(dataset["splits"]) | ({DEV_SPLIT} if dataset["dev_fraction"] else set())
        wanted = set(self.config["evaluate"]["splits"]).union(*(e.get("splits", []) for e in self.config["experiments"]))
        for split in sorted(wanted):
            if split not in available:
                raise ConfigError(
                    f"evaluate.splits names {split!r}, which the dataset does not have",
                    fix=f"use some of {sorted(available)} (dev exists when dataset.dev_fraction > 0)",
                )
        if any(METHODS[e["method"]].trained for e in self.config["experiments"]) and TRAIN_SPLIT not in available:
            raise ConfigError("trained methods need a 'train' split", fix="add train to dataset.splits")


class Chain:
    """The nodes of one experiment instance (one seed), built on demand and recorded under their roles."""

    def __init__(self, plan: Plan, index: int, experiment: Mapping[str, Any], seed: int | None):
        self.plan, self.index, self.experiment, self.seed = plan, index, experiment, seed
        self.roles: dict[str, Node] = {"prepare": plan._prepare()}

    def section(self, name: str) -> dict:
        return self.plan._section(self.index, self.experiment, name)

    def add(self, role: str, stage: str, params: Mapping[str, Any], inputs: Mapping[str, Node | RawFile]) -> Node:
        self.roles[role] = self.plan._add(stage, params, inputs)
        return self.roles[role]

    def export(self) -> Node:
        """The experiment's retriever as one sentence-transformers model (ADORE: its own query route), with its scores
        for the model card."""
        method = self.experiment["method"]
        export = METHODS[method].export
        if export is None:
            name = self.experiment["name"]
            raise ConfigError(f"experiments[{self.index}] ({name}): {method} has no encoder to export")
        inputs: dict[str, Node | RawFile] = export(self)
        encoder_section = self.encoder()
        params = {
            "name": self.experiment["name"],
            "method": method,
            "seed": self.seed,
            **self.model_params(),
            **{k: encoder_section[k] for k in ("query_max_length", "doc_max_length")},
            "dataset": Path(self.plan.config["dataset"]["path"]).name,
            **self.section("export"),
        }
        scores = {f"score_{role.removeprefix('score-')}": n for role, n in self.roles.items() if role.startswith("score-")}
        return self.add("export", "export", params, {**inputs, **scores, **self.base_model_inputs()})

    # --- runs and scores --------------------------------------------------------------------------------------
    def score(self, split: str) -> Node:
        score = {**self.section("score"), "split": split}
        return self.add(f"score-{split}", "score", score, {"prepared": self.roles["prepare"], "run": self.run(split)})

    def run(self, split: str, top_k: int | None = None) -> Node:
        """The experiment's run over a split (top_k: override, for mining)."""
        return METHODS[self.experiment["method"]].run(self, split, top_k)

    def bm25(self, split: str, top_k: int | None = None) -> Node:
        section = self.section("bm25")
        # mining asks for its depth (200), not bm25.top_k (1000, for R@1000): a fifth of the rows at MS MARCO scale
        params = {"split": split, "top_k": section["top_k"] if top_k is None else top_k}
        inputs = {"prepared": self.roles["prepare"], "index": self.bm25_index(section)}
        return self.add(f"bm25-{split}", "bm25", params, inputs)

    def bm25_index(self, section: Mapping[str, Any]) -> Node:
        """The corpus' BM25 index: every bm25 setting but top_k, so every split's run with them shares it."""
        params = {key: value for key, value in section.items() if key != "top_k"}
        return self.add("bm25-index", "bm25_index", params, {"prepared": self.roles["prepare"]})

    # --- encoders ---------------------------------------------------------------------------------------------
    def encoder(self) -> dict:
        """The encoder section, its model found (offline) and its max lengths within the model's positions."""
        section = self.section("encoder")
        _, limit = self.plan.model_source(section["model"], self.setting("encoder", "model"))
        for key in ("query_max_length", "doc_max_length"):
            if limit is not None and section[key] > limit:
                raise ConfigError(
                    f"{self.setting('encoder', key)}: {section[key]} is more tokens than model {section['model']!r} "
                    f"takes ({limit}, from its max_position_embeddings)",
                    fix=f"set it to at most {limit}",
                )
        return section

    def setting(self, section: str, key: str) -> str:
        """A setting's name as the config gives it: the experiment's override, else the section's key."""
        if key in self.experiment.get("params", {}).get(section, {}):
            return f"experiments[{self.index}] ({self.experiment['name']}): params.{section}.{key}"
        return f"{section}.{key}"

    def model_params(self) -> dict[str, Any]:
        encoder = self.encoder()
        return {"model": encoder["model"], "pooling": encoder["pooling"], "normalize": encoder["normalize"]}

    def base_model_inputs(self) -> dict[str, RawFile]:
        """What pins the base model in the keys: a local folder (its content), a Hub id's cached revision (the
        cache's refs file, which holds the commit hash); 'bundled' is no input."""
        source, _ = self.plan.model_source(self.encoder()["model"])
        return {"base_model": RawFile(source.key_file, self.plan.cache)} if source.key_file else {}

    def model_inputs(self, encoder: Node | None) -> dict[str, Node | RawFile]:
        return {"model": encoder} if encoder is not None else self.base_model_inputs()

    def adore(self) -> tuple[Node, Node]:
        """(the index, the ADORE query encoder): documents from the ``documents`` experiment's encoder (same seed),
        indexed with this experiment's index section, so that ``index.kind: pq`` gives ADORE on PQ."""
        base = self.plan.documents_experiment(self.index, self.experiment)
        base_chain = Chain(self.plan, *base, self.seed if METHODS[base[1]["method"]].trained else None)
        encoder = base_chain.document_encoder()
        shards = base_chain.shards(encoder)
        self.roles.update({role: node for role, node in base_chain.roles.items() if role != "prepare"})
        index = self.index_of(shards)
        inputs: dict[str, Node | RawFile] = {"prepared": self.roles["prepare"], "index": index}
        inputs.update({"init": encoder} if encoder is not None else self.base_model_inputs())
        params = self.train_params("adore")
        if KINDS[index.params["kind"]].scores_with_shards(params["pq_scoring"]):
            inputs.update(shard_inputs(shards))
        return index, self.add("adore", "train_adore", params, inputs)

    def document_encoder(self) -> Node | None:
        """The method's trained document encoder (`methods.METHODS`); None for the base encoder (zeroshot)."""
        method = self.experiment["method"]
        build = METHODS[method].document_encoder
        if build is None:
            raise ConfigError(f"experiments[{self.index}]: method {method!r} has no document encoder")
        return build(self)

    def train_params(self, section: str) -> dict[str, Any]:
        encoder = self.encoder()
        params = {k: v for k, v in self.section(section).items() if k != "init"}
        lengths = {k: encoder[k] for k in ("query_max_length", "doc_max_length")}
        return {**params, **lengths, **self.model_params(), "seed": self.seed}

    def negatives(self, source: str, for_warmup: bool = False) -> Node:
        """Mined train negatives; the warm-up's are the paper's BM25 top-``depth`` (no ``skip_top``). ``given``: the
        dataset's own (its prepare artifact holds them in mine_negatives' format), nothing mined."""
        if source == "given":
            return self.given_negatives()
        role = "warmup-negatives" if for_warmup else f"negatives-{source}"
        if source == "bm25":
            return self.mined(self.bm25(TRAIN_SPLIT, top_k=self.section("mine")["depth"]), role, for_warmup)
        return self.model_negatives(self.warmup(), "warmup-", role)

    def model_negatives(self, encoder: Node, prefix: str, role: str) -> Node:
        """Negatives mined by a trained encoder: the corpus encoded by it, a flat index, its train run."""
        index = self.index_of(self.shards(encoder, prefix), prefix, exact=True)
        return self.mined(self.retrieve(TRAIN_SPLIT, index, encoder, self.section("mine")["depth"], prefix), role)

    def mined(self, run: Node, role: str, for_warmup: bool = False) -> Node:
        mine = self.section("mine")
        params = {"split": TRAIN_SPLIT, **{k: mine[k] for k in ("depth", "exclude_positives", "skip_top")}}
        if for_warmup:
            params["skip_top"] = 0
        return self.add(role, "mine_negatives", params, {"prepared": self.roles["prepare"], "run": run})

    def given_negatives(self) -> Node:
        dataset = self.plan.config["dataset"]
        if not dataset_format(dataset["format"]).carries_negatives(dataset.get("layout")):
            raise ConfigError(
                f"{self.setting('mine', 'source')}: given needs a dataset that carries negatives "
                f"({' or '.join(with_negatives())})",
                fix="set mine.source to bm25 or warmup",
            )
        return self.roles["prepare"]

    def warmup(self) -> Node:
        negatives = self.negatives("bm25", for_warmup=True)
        inputs = {"prepared": self.roles["prepare"], "negatives": negatives, "tokens": self.tokens()}
        return self.add("warmup", "train_warmup", self.train_params("warmup"), {**inputs, **self.base_model_inputs()})

    def star(self) -> Node:
        star = self.section("star")
        inputs: dict[str, Node | RawFile] = {"prepared": self.roles["prepare"], "tokens": self.tokens()}
        if SAMPLERS[star["negatives"]].needs_mined_negatives:
            inputs["negatives"] = self.negatives(self.section("mine")["source"])
        if star["init"] == "warmup":
            inputs["init"] = self.warmup()
        else:
            inputs.update(self.base_model_inputs())
        return self.add("star", "train_star", self.train_params("star"), inputs)

    def tokens(self) -> Node:
        """The corpus tokenized once by the base encoder's tokenizer, which every trained encoder keeps: read by
        every corpus encoding and by the trainers' host side."""
        lengths = self.encoder()
        params = {"model": lengths["model"], "max_length": lengths["doc_max_length"]}
        return self.add("tokenize", "tokenize", params, {"prepared": self.roles["prepare"], **self.base_model_inputs()})

    # --- dense retrieval --------------------------------------------------------------------------------------
    def shards(self, encoder: Node | None, prefix: str = "") -> list[Node]:
        encode, lengths = self.section("encode"), self.encoder()
        tokens = self.tokens()
        nodes = []
        for shard in range(encode["num_shards"]):
            params = {
                **self.model_params(),
                "what": "corpus",
                "split": "",
                "shard": shard,
                "num_shards": encode["num_shards"],
                "max_length": lengths["doc_max_length"],
                "batch_size": encode["batch_size"],
                "dtype": encode["dtype"],
                "autocast": encode["autocast"],
            }
            inputs = {"prepared": self.roles["prepare"], "tokens": tokens, **self.model_inputs(encoder)}
            nodes.append(self.add(f"{prefix}encode-{shard}", "encode", params, inputs))
        return nodes

    def index_of(self, shards: list[Node], prefix: str = "", exact: bool = False) -> Node:
        """An index over the shards; ``exact`` forces the exact kind (mining negatives is not what PQ is for)."""
        inputs = shard_inputs(shards)
        params = {**self.section("index"), **({"kind": exact_kind()} if exact else {})}
        return self.add(f"{prefix}index", "index", params, inputs)

    def retrieve(
        self, split: str, index: Node, encoder: Node | None, top_k: int | None = None, prefix: str = ""
    ) -> Node:
        retrieve, lengths = self.section("retrieve"), self.encoder()
        params = {
            **retrieve,
            **self.model_params(),
            "split": split,
            "query_max_length": lengths["query_max_length"],
        }
        if top_k is not None:
            params["top_k"] = top_k
        inputs = {"prepared": self.roles["prepare"], "index": index, **self.model_inputs(encoder)}
        return self.add(f"{prefix}retrieve-{split}", "retrieve", params, inputs)
