"""Dataset configuration: one YAML file per dataset, validated strictly.

Every section below configures one stage (or a group of stages) of the pipeline. Unknown keys and
wrong types are errors raised when the YAML is loaded, naming the file and the field. Paths are
resolved lazily: a dataset whose data is missing still loads, and fails only when its first stage
runs (see :meth:`DatasetConfig.source_dir`).

This module imports only pydantic and yaml, so the Dagster definitions can load it cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import reduce
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS_DIR = REPO_ROOT / "datasets"
NAME_PATTERN = re.compile(r"[a-z0-9_]+")  # dataset names: YAML file stems, asset key prefixes, folder names
ENV_VAR_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(ValueError):
    """A dataset YAML that does not match the schema."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Source and data stages
# --------------------------------------------------------------------------------------------


class AmazonFiles(_Section):
    """Raw Amazon review dumps for one domain (plain or .gz)."""

    reviews: str
    meta: str


class SyntheticSpec(_Section):
    """Size and shape of the synthetic demo data (see lgcd_core.data.synthetic)."""

    seed: int = 7
    n_tastes: int = Field(default=6, ge=2, le=8)
    n_items_a: int = Field(default=300, ge=2)
    n_items_b: int = Field(default=400, ge=2)
    n_overlap_users: int = Field(default=300, ge=0)
    n_a_only_users: int = Field(default=250, ge=0)
    n_b_only_users: int = Field(default=250, ge=0)
    min_len: int = Field(default=5, ge=1)
    max_len: int = Field(default=14, ge=1)
    zipf_exponent: float = Field(default=1.1, ge=0.0)
    taste_purity: float = Field(default=0.8, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _lengths(self) -> SyntheticSpec:
        if self.min_len > self.max_len:
            raise ValueError("min_len must not exceed max_len")
        if self.max_len > min(self.n_items_a, self.n_items_b):
            raise ValueError("max_len must not exceed the item count of either domain")
        return self


class SourceConfig(_Section):
    """Where the raw data comes from.

    ``path`` is relative to the repository root unless absolute. When ``path_env`` names an
    environment variable that is set, its value replaces ``path``.
    """

    format: Literal["amazon", "llmcdsr", "synthetic"]
    path: str
    path_env: str | None = None
    amazon_version: Literal[2014, 2018, 2023] | None = None
    files: dict[Literal["A", "B"], AmazonFiles] | None = None
    synthetic: SyntheticSpec | None = None
    missing_metadata: Literal["error", "drop"] = "error"

    @model_validator(mode="after")
    def _format_fields(self) -> SourceConfig:
        if self.format == "amazon" and (self.amazon_version is None or self.files is None):
            raise ValueError("format 'amazon' needs 'amazon_version' and 'files' (A and B)")
        if self.format == "amazon" and set(self.files or {}) != {"A", "B"}:
            raise ValueError("'files' must name both domains, A and B")
        if self.format != "amazon" and (self.files is not None or self.amazon_version is not None):
            raise ValueError("'files' and 'amazon_version' only apply to format 'amazon'")
        if self.format != "synthetic" and self.synthetic is not None:
            raise ValueError("'synthetic' only applies to format 'synthetic'")
        return self


class DomainNames(_Section):
    A: str
    B: str


class FilterConfig(_Section):
    """k-core filtering (iterative to a fixed point, per domain) and an optional time window.

    ``time_window_days`` keeps interactions within that many days of the latest timestamp of the
    dataset (the paper: "latest month" for Movie-Book, "past year" for Food-Kitchen).
    """

    k_core: int | None = Field(default=5, ge=1)
    time_window_days: int | None = Field(default=None, ge=1)


class SplitConfig(_Section):
    """Held-out overlap users for raw data. LLMCDSR data brings its own valid/test files."""

    seed: int = 42
    valid_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    min_history: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ratios(self) -> SplitConfig:
        if self.valid_ratio + self.test_ratio >= 1.0:
            raise ValueError("valid_ratio + test_ratio must be below 1")
        return self


# --------------------------------------------------------------------------------------------
# Language stages
# --------------------------------------------------------------------------------------------


class TextEncoderConfig(_Section):
    """sentence-transformers model for item text (eq. 1, 5). 'default' = offline all-MiniLM-L6-v2."""

    model: str = "default"
    batch_size: int = Field(default=128, ge=1)
    max_seq_length: int = Field(default=128, ge=8)
    trust_remote_code: bool = False  # e.g. jinaai/jina-embeddings-v2-base-en needs True


class GenerationConfig(_Section):
    """Decoding settings; every field is part of the generation cache key."""

    max_new_tokens: int = Field(default=64, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=0.7, gt=0.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    seed: int = 0


class HttpBackendConfig(_Section):
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    concurrency: int = Field(default=4, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)  # wait before retry r is backoff_s * 2**r

    @field_validator("api_key_env")
    @classmethod
    def _env_var_name(cls, value: str | None) -> str | None:
        # the message must not echo the value: a user may have pasted the key itself here
        if value is not None and not ENV_VAR_PATTERN.fullmatch(value):
            raise ValueError("must name an environment variable (letters, digits, underscore), "
                             "not hold the key itself")
        return value


class LLMConfig(_Section):
    """Pseudo-text generation (eq. 4). 'default' model = offline SmolLM2-135M-Instruct GGUF."""

    backend: Literal["transformers", "http"] = "transformers"
    model: str = "default"
    gguf_file: str | None = None
    batch_size: int = Field(default=16, ge=1)
    max_users: int | None = Field(default=None, ge=1)
    sample_seed: int = 0
    history_items: int = Field(default=10, ge=1)
    n_descriptions: int = Field(default=5, ge=1)  # how many target items the prompt asks for
    max_item_chars: int = Field(default=160, ge=8)  # each history item's text is cut to this
    template_a_to_b: str = "default"
    template_b_to_a: str = "default"
    trust_remote_code: bool = False
    on_failure: Literal["raise", "unusable"] = "raise"  # requests that fail after all retries
    generation: GenerationConfig = GenerationConfig()
    http: HttpBackendConfig | None = None

    @model_validator(mode="after")
    def _http(self) -> LLMConfig:
        if self.backend == "http" and self.http is None:
            raise ValueError("backend 'http' needs an 'http' section (base_url, model)")
        return self


class GroundingConfig(_Section):
    """FAISS grounding of pseudo descriptions to real target items (eq. 5-6).

    ``merge``: how a user's per-description top lists become n_k items; ``unusable``: what happens to
    users whose answer has no description (see lgcd_core.language.grounding).
    """

    n_k: int = Field(default=10, ge=1)
    per_description_k: int | None = Field(default=None, ge=1)
    merge: Literal["round_robin", "max_score", "mean_query"] = "round_robin"
    unusable: Literal["source_history", "drop"] = "source_history"


class PseudoOverlapConfig(_Section):
    seed: int = 0


# --------------------------------------------------------------------------------------------
# Model stages
# --------------------------------------------------------------------------------------------


class PretrainConfig(_Section):
    """Per-domain ID + text sequence encoders, next-item pre-training (eq. 1-3)."""

    d: int = Field(default=64, ge=4)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=1, ge=1)
    max_len: int = Field(default=50, ge=2)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=128, ge=1)
    epochs: int = Field(default=30, ge=1)
    patience: int = Field(default=5, ge=1)
    seed: int = 0
    bf16: bool = False  # bf16 autocast on CUDA


class LGCDConfig(_Section):
    """Conditional diffusion preference generator and MoE fusion (eq. 7-27), with ablation switches."""

    T: int = Field(default=100, ge=1)
    beta_min: float = Field(default=1e-4, gt=0)
    beta_max: float = Field(default=0.1, gt=0)
    lambda_A: float = Field(default=0.5, gt=0.0, le=1.0)
    lambda_B: float = Field(default=0.3, gt=0.0, le=1.0)
    n_heads: int = Field(default=4, ge=1)
    n_experts: int = Field(default=8, ge=1)
    overlap_per_batch: int = Field(default=32, ge=0)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    epochs: int = Field(default=30, ge=1)
    patience: int = Field(default=5, ge=1)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    freeze_encoders: bool = True
    seed: int = 0
    # Table 3 ablations
    use_diffusion: bool = True
    overlap_diffusion: bool = True
    pseudo_diffusion: bool = True
    alignment_loss: bool = True
    guesser: bool = True
    moe: bool = True
    cyclic_batches: bool = True
    # Choices where the paper is ambiguous (docs/method.md explains each)
    max_len: int = Field(default=50, ge=2)
    targets: Literal["all", "last_per_domain", "last"] = "all"
    condition_tokens: Literal["sequence", "last"] = "sequence"
    pseudo_condition: Literal["id_fused", "id_raw", "full"] = "id_fused"
    x0_when_empty: Literal["skip", "zero"] = "skip"
    align_on: Literal["pseudo", "overlap", "both"] = "pseudo"
    guess_on: Literal["overlap", "both"] = "overlap"
    schedule: Literal["sqrt_linear", "linear"] = "sqrt_linear"
    train_reverse: Literal["full", "one_step"] = "full"
    reverse_grad_steps: int = Field(default=1, ge=1)
    reverse_noise: bool = False
    diff_weight: float = Field(default=1.0, ge=0)
    guess_weight: float = Field(default=1.0, ge=0)
    align_weight: float = Field(default=1.0, ge=0)
    pseudo_rec_weight: float = Field(default=1.0, ge=0)
    encoder_lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    bf16: bool = False
    eval_batch_size: int = Field(default=512, ge=1)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


# Ablation variants of LGCD (Table 3): variant name -> the LGCDConfig switch it turns off.
# A variant is reported as model ``lgcd_<variant>``.
VARIANT_SWITCHES: dict[str, str] = {
    "wo_diffusion": "use_diffusion",
    "wo_overlap_diffusion": "overlap_diffusion",
    "wo_pseudo_diffusion": "pseudo_diffusion",
    "wo_alignment": "alignment_loss",
    "wo_guesser": "guesser",
    "wo_moe": "moe",
    "wo_cyclic": "cyclic_batches",
}
SASREC_BASELINES = ("sasrec_single", "sasrec_mixed")  # trained by the `baselines` stage, in this order
BASELINES = (*SASREC_BASELINES, "pretrained_encoder", "popularity", "lgcd_wo_diffusion")


class BaselineSASRecConfig(_Section):
    """The SASRec baselines (single-domain and mixed), trained by the `baselines` stage (lgcd_core.model.train_sasrec).

    ``train_negatives``: None trains with full-softmax cross-entropy over the model's vocabulary;
    an integer trains a sampled softmax against that many uniform negatives shared by the batch.
    Early stopping reads valid NDCG@10 every ``eval_every`` epochs, in ``selection_setting``, under
    ``selection_protocol`` (``sampled999``: the stored valid candidates; ``full``: every item of the
    target domain); test is never read.
    """

    d: int = Field(default=64, ge=4)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=1, ge=1)
    max_len: int = Field(default=50, ge=2)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    lr: float = Field(default=5e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=256, ge=1)
    max_epochs: int = Field(default=15, ge=1)
    patience: int = Field(default=3, ge=1)
    eval_every: int = Field(default=1, ge=1)
    train_negatives: int | None = Field(default=1000, ge=1)
    selection_setting: Literal["inter_domain", "mixed_history"] = "mixed_history"
    selection_protocol: Literal["sampled999", "full"] = "sampled999"


class ReferenceRow(_Section):
    """A published row shown beside ours (e.g. the paper's Table 1): values keyed 'A:HR@10'."""

    label: str
    split: str = "test"
    setting: Literal["inter_domain", "mixed_history"] = "inter_domain"
    values: dict[str, float]


class EvaluationConfig(_Section):
    n_negatives: int = Field(default=999, ge=1)
    candidate_seed: int = 2026
    ks: list[int] = [1, 5, 10]
    seeds: list[int] = Field(default=[0], min_length=1)
    baselines: list[str] = list(BASELINES)
    variants: list[str] = []
    lgcd_reads_target_history: bool = False
    batch_size: int = Field(default=512, ge=1)
    sasrec: BaselineSASRecConfig = BaselineSASRecConfig()
    paper_rows: list[ReferenceRow] = []

    @model_validator(mode="after")
    def _names(self) -> EvaluationConfig:
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
        unknown = [v for v in self.variants if v not in VARIANT_SWITCHES]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANT_SWITCHES)}")
        return self

    @property
    def lgcd_variants(self) -> list[str]:
        """The Table 3 variants `lgcd_model` trains: ``variants``, and wo_diffusion when baseline lgcd_wo_diffusion is listed."""
        listed = "lgcd_wo_diffusion" in self.baselines and "wo_diffusion" not in self.variants
        return [*self.variants, *(["wo_diffusion"] if listed else [])]

    @property
    def sasrec_baselines(self) -> list[str]:
        """The listed baselines the `baselines` stage trains."""
        return [b for b in SASREC_BASELINES if b in self.baselines]


class DatasetConfig(_Section):
    """The whole YAML of one dataset."""

    name: str = Field(pattern=rf"^{NAME_PATTERN.pattern}$")
    description: str = ""
    device: str = "auto"
    source: SourceConfig
    domains: DomainNames
    filter: FilterConfig = FilterConfig()
    split: SplitConfig = SplitConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    llm: LLMConfig = LLMConfig()
    grounding: GroundingConfig = GroundingConfig()
    pseudo_overlap: PseudoOverlapConfig = PseudoOverlapConfig()
    pretrain: PretrainConfig = PretrainConfig()
    lgcd: LGCDConfig = LGCDConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    # ---- paths -----------------------------------------------------------------------------

    def source_dir(self) -> Path:
        """The raw data folder (environment override applied), not checked for existence."""
        raw = os.environ.get(self.source.path_env, "") if self.source.path_env else ""
        path = Path(raw or self.source.path).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    def stage_dir(self, stage: str, *parts: str, root: Path | None = None) -> Path:
        """Where a stage writes its files: ``<data root>/<name>/<stage>[/<parts>...]``.

        Raises :class:`ConfigError` when the folder, symlinks followed, lies outside the data root.
        """
        root = root or output_root()
        return inside_root(root.joinpath(self.name, stage, *parts), root)

    # ---- versions ---------------------------------------------------------------------------

    def stage_config(self, stage: str) -> dict:
        """The part of this YAML that configures ``stage`` (what its version hashes): sections and dotted fields."""
        return {key: _dump(reduce(getattr, key.split("."), self)) for key in STAGE_CONFIG_KEYS[stage]}

    def stage_hash(self, stage: str) -> str:
        blob = json.dumps(self.stage_config(stage), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _dump(value: object) -> object:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


# Which parts of the YAML configure which stage: a section, or a dotted field of one (derived fields
# included). A stage's version hashes only these, so editing one marks that stage (and, through data
# versions, its downstream) stale and nothing upstream: a λ edits `lgcd` only, so it re-runs
# `lgcd_model` and `evaluation`, never `baselines`.
STAGE_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "raw_interactions": ("source", "domains"),
    "raw_items": ("source", "domains"),
    "filtered_interactions": ("filter",),
    "sequences": ("split",),
    "item_text_embeddings": ("text_encoder",),
    "pseudo_texts": ("llm",),
    "grounded_items": ("grounding",),
    "pseudo_overlap_sequences": ("pseudo_overlap",),
    "pretrained_encoders": ("pretrain",),
    "lgcd_model": ("lgcd", "evaluation.seeds", "evaluation.lgcd_variants"),
    "baselines": ("evaluation.seeds", "evaluation.sasrec_baselines", "evaluation.sasrec", "evaluation.n_negatives",
                  "evaluation.candidate_seed"),
    "evaluation": ("evaluation",),
}


def output_root() -> Path:
    """Root of generated data; ``LGCD_DATA_ROOT`` overrides ``<repo>/datasets``."""
    return Path(os.environ.get("LGCD_DATA_ROOT", str(DATASETS_DIR)))


def datasets_dir() -> Path:
    """The folder of dataset YAML files; ``LGCD_DATASETS_DIR`` overrides ``<repo>/datasets``."""
    return Path(os.environ.get("LGCD_DATASETS_DIR", str(DATASETS_DIR)))


def inside_root(path: Path, root: Path) -> Path:
    """``path`` itself, after checking that it resolves (symlinks followed on both sides) inside ``root``."""
    resolved, resolved_root = path.resolve(), root.resolve()
    if not resolved.is_relative_to(resolved_root):
        raise ConfigError(f"{path}: resolves to {resolved}, outside the data root {resolved_root}; "
                          "set LGCD_DATA_ROOT to move all outputs instead of symlinking one folder out")
    return path


def dataset_path(name: str, directory: Path | None = None) -> Path:
    """The YAML file of dataset ``name``; ConfigError naming the dataset and the known ones if there is none."""
    directory = directory or datasets_dir()
    path = directory / f"{name}.yaml"
    if not NAME_PATTERN.fullmatch(name) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml"))) or "none"
        raise ConfigError(f"no dataset {name!r} in {directory}; known datasets: {known}")
    return path


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without the snippet of the offending line PyYAML quotes (it may hold a secret)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"not valid YAML{where}: {getattr(exc, 'problem', None) or type(exc).__name__}"


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _validation_problems(exc: ValidationError) -> str:
    """One clause per error: the field's dotted path and pydantic's message, never the input value."""
    return "; ".join(
        f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg'].removeprefix('Value error, ')}"
        for err in exc.errors()
    )


def load_dataset_config(path: Path) -> DatasetConfig:
    """Parse and validate one dataset YAML; errors name the file and the offending field."""
    if not NAME_PATTERN.fullmatch(path.stem):
        raise ConfigError(f"{path}: a dataset file name must be lowercase letters, digits and underscores "
                          f"([a-z0-9_]+) followed by .yaml, got {path.stem!r}")
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    if raw["name"] != path.stem:
        raise ConfigError(f"{path}: field 'name' is {raw['name']!r} but must equal the file name {path.stem!r}")
    try:
        return DatasetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_validation_problems(exc)}") from None


def discover_datasets(directory: Path | None = None) -> list[DatasetConfig]:
    """Every ``*.yaml`` in the datasets folder (hidden ones included, and refused), sorted by name."""
    directory = directory or datasets_dir()
    if not directory.is_dir():
        raise ConfigError(f"{directory}: the datasets folder does not exist (LGCD_DATASETS_DIR)")
    return [load_dataset_config(p) for p in sorted(directory.glob("*.yaml"))]
