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
from typing import Annotated, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lgcd_core.stages import STAGES

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASETS_DIR = REPO_ROOT / "datasets"
NAME_PATTERN = re.compile(r"[a-z0-9_]+")  # dataset names: YAML file stems, asset key prefixes, folder names
ENV_VAR_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(ValueError):
    """A dataset YAML that does not match the schema."""


class _Section(BaseModel):
    """A YAML section: unknown keys, non-finite floats, and booleans where a number goes (or the reverse) are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _strict_booleans(cls, data: object) -> object:
        """YAML's ``true`` is not the integer 1, and ``1`` is not ``true``: refuse either in place of the other."""
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None:
                continue
            kinds = _scalar_kinds(field.annotation)
            if isinstance(value, bool) and kinds and bool not in kinds:
                raise ValueError(f"field '{name}' must be a number, got the boolean {str(value).lower()}")
            if kinds == {bool} and not isinstance(value, bool):
                raise ValueError(f"field '{name}' must be true or false, got {type(value).__name__}")
        return data


def _scalar_kinds(annotation: object) -> set[type]:
    """The scalar types (bool, int, float) an annotation admits, e.g. ``int | None`` -> {int}."""
    if get_origin(annotation) is Annotated:
        return _scalar_kinds(get_args(annotation)[0])
    if get_origin(annotation) in (Union, type(int | None)):
        return set().union(*(_scalar_kinds(a) for a in get_args(annotation)))
    return {annotation} & {bool, int, float}


Seed = Annotated[int, Field(ge=0, lt=2**32)]  # what every generator (numpy, torch, random) accepts, with room to combine


def _heads_divide(d: int, n_heads: int, what: str) -> None:
    if d % n_heads:
        raise ValueError(f"{what}n_heads ({n_heads}) must divide d ({d})")


def _distinct(values: list, what: str) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} must be distinct; repeated: {repeated}")


# --------------------------------------------------------------------------------------------
# Source and data stages
# --------------------------------------------------------------------------------------------


class AmazonFiles(_Section):
    """Raw Amazon review dumps for one domain (plain or .gz)."""

    reviews: str  # the reviews file (user, item, time), relative to source.path
    meta: str  # the item metadata file (title, categories, ...), relative to source.path


class SyntheticSpec(_Section):
    """Size and shape of the synthetic demo data (see lgcd_core.data.synthetic)."""

    seed: Seed = 7  # the generator's seed: the same spec gives the same files, byte for byte
    n_tastes: int = Field(default=6, ge=2, le=8)  # latent tastes (italian, baking, tea, ...) shared by both domains
    n_items_a: int = Field(default=300, ge=2)  # items of domain A (Grocery)
    n_items_b: int = Field(default=400, ge=2)  # items of domain B (Kitchen)
    n_overlap_users: int = Field(default=300, ge=0)  # users with items in both domains
    n_a_only_users: int = Field(default=250, ge=0)  # users with A items only
    n_b_only_users: int = Field(default=250, ge=0)  # users with B items only
    min_len: int = Field(default=5, ge=1)  # fewest interactions of a user
    max_len: int = Field(default=14, ge=1)  # most interactions of a user
    zipf_exponent: float = Field(default=1.1, ge=0.0)  # item popularity within a taste: Zipf-like with this exponent
    taste_purity: float = Field(default=0.8, ge=0.0, le=1.0)  # chance an interaction comes from the user's main taste

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

    format: Literal["amazon", "llmcdsr", "interactions", "synthetic"]  # raw Amazon dumps, LLMCDSR's processed folders,
    # a plain interactions + items file (CSV or Parquet, lgcd_core/data/interactions.py), or generated
    path: str  # the raw data folder (for 'synthetic': where the generated files go, relative to the data root)
    path_env: str | None = None  # an environment variable that, when set, replaces path
    amazon_version: Literal[2014, 2018, 2023] | None = None  # the Amazon dump's layout ('amazon' only)
    files: dict[Literal["A", "B"], AmazonFiles] | None = None  # the files of each domain ('amazon' only)
    synthetic: SyntheticSpec | None = None  # the generated data's spec ('synthetic' only; defaults when absent)
    missing_metadata: Literal["error", "drop"] = "error"  # reviews of items without metadata: fail, or drop them

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
    """Display names of the two domains (prompts, reports)."""

    A: str  # e.g. "Food"
    B: str  # e.g. "Kitchen"

    @model_validator(mode="after")
    def _names(self) -> DomainNames:
        for key, name in (("A", self.A), ("B", self.B)):
            if not name.strip():
                raise ValueError(f"domain name {key} is blank")
            if any(not ch.isprintable() for ch in name):  # newlines, tabs, NUL, ESC, RLO...: they go into prompts
                raise ValueError(f"domain name {key} must be one line of printable characters")
        if self.A.strip().casefold() == self.B.strip().casefold():
            raise ValueError(f"the two domains must have different names, both are {self.A!r}")
        return self


class FilterConfig(_Section):
    """k-core filtering (iterative to a fixed point, per domain) and an optional time window.

    ``time_window_days`` keeps interactions within that many days of the latest timestamp of the
    dataset (the paper: "latest month" for Movie-Book, "past year" for Food-Kitchen).
    """

    k_core: int | None = Field(default=5, ge=1)  # every user and item keeps >= k interactions per domain; null: no filter
    time_window_days: int | None = Field(default=None, ge=1)  # keep the last this many days; null: all time


class SplitConfig(_Section):
    """Held-out overlap users for raw data. LLMCDSR data brings its own valid/test files."""

    seed: Seed = 42  # shuffles the eligible overlap users before they are held out
    valid_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)  # share of overlap users held out for valid
    test_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)  # share of overlap users held out for test
    min_history: int = Field(default=1, ge=1)  # a held-out user needs this many other-domain items before the target

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

    model: str = "default"  # a sentence-transformers model name or folder
    batch_size: int = Field(default=128, ge=1)  # item texts encoded per batch
    max_seq_length: int = Field(default=128, ge=8)  # tokens of an item text the encoder reads
    trust_remote_code: bool = False  # e.g. jinaai/jina-embeddings-v2-base-en needs True
    without_text: list[Literal["A", "B"]] = []  # domains whose item text is not used (besides any domain where no item
    # has a title): nothing is embedded for them, and the ID encoder stands in for the text encoder (docs/method.md)


# Token budget of an answer when `llm.generation.max_new_tokens` is null: room for a preamble plus a
# generous line per asked item (SmolLM2 copies the long Amazon titles of its prompt: 20-25 tokens an item
# on Food-Kitchen), so a list of n items is not cut by the cap. The transformers backend also stops a
# row once its list is complete, so the budget costs nothing when answers end on time.
ANSWER_TOKENS_BASE = 32
ANSWER_TOKENS_PER_ITEM = 32


class GenerationConfig(_Section):
    """Decoding settings; every field is part of the generation cache key (with the resolved token cap)."""

    max_new_tokens: int | None = Field(default=None, ge=1)  # longest answer, in tokens; null: 32 + 32 per asked item
    do_sample: bool = False  # sample (temperature, top_p); false: greedy decoding
    temperature: float = Field(default=0.7, gt=0.0)  # sampling temperature (do_sample only)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)  # nucleus sampling mass (do_sample only)
    repetition_penalty: float = Field(default=1.0, gt=0.0)  # 1: none
    seed: Seed = 0  # sampling seed

    def token_cap(self, n_items: int) -> int:
        """``max_new_tokens``, or when null the budget of a complete list of ``n_items`` items."""
        return self.max_new_tokens or ANSWER_TOKENS_BASE + ANSWER_TOKENS_PER_ITEM * n_items


class HttpBackendConfig(_Section):
    """OpenAI-compatible chat-completions endpoints (vLLM, llama.cpp server, Ollama, TGI): one server or a fleet.

    A fleet is several servers of the same model: requests are spread over them, at most ``concurrency``
    in flight per endpoint, and a request that fails on one endpoint moves to the next (see
    :mod:`lgcd_core.language.fleet`). Which endpoint answered is not part of the cache key.
    """

    base_url: str | None = None  # one server, e.g. http://localhost:8000/v1 (or list several in endpoints)
    endpoints: list[str] = []  # several servers of the same model, e.g. [http://gpu1:8000/v1, http://gpu2:8000/v1]
    model: str  # the model name the server expects
    api_key_env: str | None = None  # the environment variable holding the API key (never the key itself); sent to every endpoint
    concurrency: int = Field(default=4, ge=1)  # requests in flight at once, per endpoint
    timeout_s: float = Field(default=60.0, gt=0)  # total per request (connect, send, every byte of the reply); a request
    # past it is stalled and moves to another endpoint
    max_reply_bytes: int = Field(default=4_000_000, ge=1024)  # a longer reply is refused as malformed (read no further)
    max_retries: int = Field(default=3, ge=0)  # retries of a failed request on the same endpoint
    backoff_s: float = Field(default=1.0, ge=0)  # wait before retry r is backoff_s * 2**r
    cooldown_s: float = Field(default=30.0, ge=0)  # an endpoint whose request failed gets no new request for this long (fleet)

    @field_validator("api_key_env")
    @classmethod
    def _env_var_name(cls, value: str | None) -> str | None:
        # the message must not echo the value: a user may have pasted the key itself here
        if value is not None and not ENV_VAR_PATTERN.fullmatch(value):
            raise ValueError("must name an environment variable (letters, digits, underscore), "
                             "not hold the key itself")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_servers(self) -> HttpBackendConfig:
        if (self.base_url is None) == (not self.endpoints):
            raise ValueError("give either base_url (one server) or endpoints (a list of servers), not both or neither")
        repeated = sorted({url for url in self.endpoints if self.endpoints.count(url) > 1})
        if repeated:
            raise ValueError(f"endpoints lists {', '.join(repeated)} more than once (raise concurrency instead)")
        return self

    @property
    def urls(self) -> list[str]:
        """The base URL of every endpoint: ``[base_url]`` or ``endpoints``."""
        return [self.base_url] if self.base_url is not None else list(self.endpoints)


class RayConfig(_Section):
    """Where and how wide the Ray backend runs: one transformers model replica per Ray actor."""

    address: str | None = None  # a running cluster (ray://head:10001 or auto); null: $RAY_ADDRESS, else a local Ray here
    workers: int = Field(default=2, ge=1)  # actors, each holding one model replica
    cpus_per_worker: float = Field(default=1.0, gt=0)  # CPUs reserved per actor (also its torch threads, rounded up)
    gpus_per_worker: float = Field(default=0.0, ge=0)  # GPUs per actor; > 0 runs the replicas on CUDA


class LlamaCppConfig(_Section):
    """How the llama.cpp backend runs its GGUF file: speed only, except ``weights`` (which enters the cache key)."""

    # the GGUF's weights as llama.cpp computes with them: as_is, or re-encoded once by llama.cpp (kept in model_cache);
    # bf16/f16 hold a 4-bit file's values (to their rounding) and run llama.cpp's matrix kernels: on a CPU with
    # AVX512-BF16, bf16 is the fastest (bench/results/llm_throughput_llama_cpp.md); without it, or on a GPU, try f16
    weights: Literal["as_is", "bf16", "f16", "q8_0"] = "bf16"
    model_cache: str | None = None  # where re-encoded GGUF files are kept; null: $XDG_CACHE_HOME/lgcd/gguf (~/.cache/lgcd/gguf)
    n_threads: int | None = Field(default=None, ge=1)  # CPU threads; null: llama.cpp's default (the physical cores)
    n_ctx: int = Field(default=1024, ge=256)  # context window of one sequence: prompt + answer tokens
    # sequences decoded together (continuous batching), each with its own KV cache: parallel x n_ctx cells
    # (SmolLM2-135M: 23 KB a cell, 1.5 GB at the defaults)
    parallel: int = Field(default=64, ge=1, le=256)
    n_gpu_layers: int = Field(default=0, ge=-1)  # layers offloaded to a GPU (a CUDA build of llama-cpp-python); -1: all


class LLMConfig(_Section):
    """Pseudo-text generation (eq. 4). 'default' model = offline SmolLM2-135M-Instruct GGUF."""

    backend: Literal["transformers", "http", "ray", "llama_cpp"] = "transformers"  # a local model, servers, Ray actors, or llama.cpp
    model: str = "default"  # a Hugging Face model name or folder (transformers and ray backends)
    gguf_file: str | None = None  # a GGUF file inside model to load instead of safetensors
    batch_size: int = Field(default=16, ge=1)  # prompts per generation batch (transformers, ray); llama_cpp: answers saved per group
    history_items: int = Field(default=10, ge=1)  # the user's most recent source items the prompt lists (every source reads them)
    n_descriptions: int | None = Field(default=None, ge=1)  # target items the prompt asks for; null: grounding.n_k (eq. 4)
    max_item_chars: int = Field(default=160, ge=8)  # each history item's text is cut to this
    quantize: Literal["none", "int8"] = "none"  # int8: dynamic int8 quantisation of the linear layers (transformers on CPU only)
    template_a_to_b: str = "default"  # prompt template for A-only users (a file with {items}); 'default' = packaged
    template_b_to_a: str = "default"  # prompt template for B-only users
    trust_remote_code: bool = False  # let transformers run the model repository's own code
    on_failure: Literal["raise", "unusable"] = "raise"  # requests that fail after all retries
    generation: GenerationConfig = GenerationConfig()  # decoding settings
    http: HttpBackendConfig | None = None  # the server or fleet (backend 'http' only)
    ray: RayConfig = RayConfig()  # the Ray cluster and actors (backend 'ray' only)
    llama_cpp: LlamaCppConfig = LlamaCppConfig()  # threads and context of the GGUF file (backend 'llama_cpp' only)

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: object) -> object:
        moved = [f"'{key}' is now 'pseudo_overlap.{key}'" for key in ("max_users", "sample_seed")
                 if isinstance(data, dict) and key in data]
        if moved:
            raise ValueError(f"the user sample applies to every pseudo source: {', '.join(moved)}")
        return data

    @model_validator(mode="after")
    def _http(self) -> LLMConfig:
        if self.backend == "http" and self.http is None:
            raise ValueError("backend 'http' needs an 'http' section (base_url or endpoints, model)")
        return self

    def resolved(self, n_k: int) -> LLMConfig:
        """A copy with the derived fields filled in: ``n_descriptions`` (null: ``n_k``) and the token cap."""
        n = self.n_descriptions or n_k
        generation = self.generation.model_copy(update={"max_new_tokens": self.generation.token_cap(n)})
        return self.model_copy(update={"n_descriptions": n, "generation": generation})


class GroundingConfig(_Section):
    """FAISS grounding of pseudo descriptions to real target items (eq. 5-6).

    ``merge``: how a user's per-description top lists become n_k items; ``unusable``: what happens to
    users whose answer has no description (see lgcd_core.language.grounding).
    """

    n_k: int = Field(default=10, ge=1)  # n_K: grounded target items per user (eq. 6)
    per_description_k: int | None = Field(default=None, ge=1)  # nearest items fetched per description; null: n_k
    merge: Literal["round_robin", "max_score", "mean_query"] = "round_robin"  # per-description lists -> n_k items
    unusable: Literal["source_history", "drop"] = "source_history"  # no description: query with the source items, or drop


class PseudoOverlapConfig(_Section):
    """The pseudo-overlap users: which single-domain users, where their target items come from, where they go.

    ``source`` (see lgcd_core.language.pseudo_sources):
    - ``llm`` (the paper, eq. 4-6): an LLM answer per user, its descriptions grounded by FAISS;
    - ``text`` (LLM-free): the user's own recent source items, embedded by the text encoder, grounded
      by the same FAISS search (what ``grounding.unusable: source_history`` does for one user);
    - ``collaborative`` (LLM-free; our extension, not the paper's): the target items most often bought
      together with the user's recent source items by overlap users in the training sequences.
    The same seeded sample of ``max_users`` users serves every source, so sources compare at equal coverage.
    """

    source: Literal["llm", "text", "collaborative"] = "llm"  # where pseudo users' target items come from (see above)
    max_users: int | None = Field(default=None, ge=1)  # a seeded sample of this many single-domain users; null: all
    sample_seed: Seed = 0  # seed of that sample (the same users for every source)
    seed: Seed = 0  # with user_idx, seeds where each user's grounded items are inserted


# --------------------------------------------------------------------------------------------
# Model stages
# --------------------------------------------------------------------------------------------


class PretrainConfig(_Section):
    """Per-domain ID + text sequence encoders, next-item pre-training (eq. 1-3)."""

    d: int = Field(default=64, ge=4)  # hidden size of both encoders, and of LGCD
    n_layers: int = Field(default=2, ge=1)  # transformer layers of each sequence encoder
    n_heads: int = Field(default=1, ge=1)  # attention heads per layer; must divide d
    max_len: int = Field(default=50, ge=2)  # most recent items of a sequence the encoders read
    positions: Literal["start", "end"] = "start"  # position ids count from the first item (prefix-exact) or the last column
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)  # dropout inside the encoders
    lr: float = Field(default=1e-3, gt=0)  # Adam learning rate
    weight_decay: float = Field(default=0.0, ge=0)  # Adam weight decay
    batch_size: int = Field(default=128, ge=1)  # sequences per batch
    train_negatives: int | None = Field(default=None, ge=1)  # eq. 3 as a sampled softmax on this many negatives; null: full
    epochs: int = Field(default=30, ge=1)  # most epochs per domain; the best one on valid NDCG@10 is kept
    patience: int = Field(default=5, ge=1)  # stop after this many epochs without a better valid NDCG@10
    seed: Seed = 0  # seeds initialisation and batch order
    bf16: bool = False  # bf16 autocast on CUDA

    @model_validator(mode="after")
    def _heads(self) -> PretrainConfig:
        _heads_divide(self.d, self.n_heads, "")
        return self


class LGCDDiffusion(_Section):
    """The conditional diffusion process (eq. 9-20)."""

    T: int = Field(default=100, ge=1)  # number of diffusion steps T; timesteps run 1..T
    beta_min: float = Field(default=1e-4, gt=0)  # β_1, the noise variance of the first step (eq. 9)
    beta_max: float = Field(default=0.1, gt=0)  # β_T, the noise variance of the last step
    schedule: Literal["sqrt_linear", "linear"] = "sqrt_linear"  # β_t between them: √β linear (our reading) or β linear
    lambda_A: float = Field(default=0.5, gt=0.0, le=1.0)  # λ when A is the target: reverse starts at t = λT (eq. 18-19)
    lambda_B: float = Field(default=0.3, gt=0.0, le=1.0)  # λ when B is the target
    sampler_steps: int | None = Field(default=10, ge=0)  # reverse jumps t_start -> 0: DDIM (η=0) on this many; null/0: each step, eq. 20
    inference_draws: int = Field(default=1, ge=1)  # ε draws per user at inference; the scores are averaged over them

    @model_validator(mode="after")
    def _betas(self) -> LGCDDiffusion:
        if not 0.0 < self.beta_min <= self.beta_max < 1.0:
            raise ValueError(f"need 0 < beta_min <= beta_max < 1, got beta_min {self.beta_min}, beta_max {self.beta_max}")
        return self


class LGCDArchitecture(_Section):
    """Sizes of the denoiser and the fusion; d comes from the pretrained encoders (``pretrain.d``)."""

    n_heads: int = Field(default=4, ge=1)  # heads of the denoiser's cross-attention (eq. 13); must divide d
    n_experts: int = Field(default=8, ge=1)  # experts of the MoE fusion (eq. 23-24)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)  # dropout on the denoiser's attention weights and FFN
    max_len: int = Field(default=50, ge=2)  # most recent items of each domain a training row or scored history keeps


class LGCDTraining(_Section):
    """The training loop: batches, optimiser, early stopping."""

    epochs: int = Field(default=30, ge=1)  # most epochs; the best one on valid NDCG@10 is kept
    patience: int = Field(default=5, ge=1)  # stop after this many epochs without a better valid NDCG@10
    batch_size: int = Field(default=128, ge=1)  # rows per batch (one direction per batch)
    overlap_per_batch: int = Field(default=32, ge=0)  # real overlap rows in every cyclic batch (ablations.cyclic_batches)
    pseudo_repeats: bool = False  # few pseudo rows: cycle them so every batch has batch_size - overlap_per_batch (drawn
    # many times an epoch); false: one pass per epoch spread over the batches, never drawn more often than overlap rows
    lr: float = Field(default=1e-3, gt=0)  # Adam learning rate of the denoiser, guesser and fusion
    encoder_lr: float = Field(default=1e-4, gt=0)  # Adam learning rate of the encoders when not frozen
    weight_decay: float = Field(default=0.0, ge=0)  # Adam weight decay
    freeze_encoders: bool = True  # keep the pretrained encoders fixed (and in eval mode); false fine-tunes them
    seed: Seed = 0  # seed of the default model (evaluation.seeds trains more)
    bf16: bool = False  # bf16 autocast on CUDA
    eval_batch_size: int = Field(default=512, ge=1)  # rows per batch when scoring valid cases
    rec_negatives: int | None = Field(default=None, ge=1)  # L_rec (eq. 25): sampled softmax, this many negatives; null: full


class LGCDAblations(_Section):
    """The Table 3 switches; each variant of ``evaluation.variants`` turns one off (VARIANT_SWITCHES)."""

    use_diffusion: bool = True  # false: no generator, h^rev = 0, only L_rec ('w/o diffusion')
    overlap_diffusion: bool = True  # L_diff (eq. 17) on real overlap rows
    pseudo_diffusion: bool = True  # L_diff (eq. 17) on pseudo-overlap rows
    alignment_loss: bool = True  # L_align (eq. 21)
    guesser: bool = True  # warm start from g(h^cond) at t = λT (eq. 18, 22); false: start at x_T = 0
    moe: bool = True  # MoE fusion (eq. 23-24); false: one linear layer on [h^cond ; h^rev]
    rec_trains_generator: bool = True  # false: h^rev is detached in the fusion, so L_rec never reaches the denoiser
    # (it learns from L_diff and L_align alone; a diagnostic of issue 13, not a Table 3 row)
    cyclic_batches: bool = True  # every batch holds training.overlap_per_batch overlap rows; false: pooled and shuffled
    oracle_x0: bool = False  # the oracle ceiling (not a Table 3 row): h^rev := the true x0 wherever a target has one,
    # in training and when scored with a target history, so the fusion learns what a perfect generator would give it


class LGCDInterpretation(_Section):
    """Choices where the paper is ambiguous; the defaults are our reading (docs/method.md explains each)."""

    targets: Literal["all", "last_per_domain", "last"] = "all"  # which target-domain items are L_rec targets; 'last' = paper-literal
    condition_tokens: Literal["sequence", "last"] = "sequence"  # denoiser keys/values: every source position, or h^cond alone (eq. 13)
    pseudo_condition: Literal["id_fused", "full"] = "id_fused"  # pseudo rows' condition: ID only (eq. 8), or ID + text like real rows
    align_on: Literal["pseudo", "overlap", "both"] = "pseudo"  # rows L_align (eq. 21) applies to; eq. 27 says pseudo
    x0: Literal["preceding", "including"] = "preceding"  # x0 (eq. 7): target items before the target, or up to it (DreamRec)
    target_history_weight: float = Field(default=1.0, ge=0.0)  # weight of the target encoder vector of target-domain items (ours)

    @model_validator(mode="before")
    @classmethod
    def _removed_fields(cls, data: object) -> object:
        if isinstance(data, dict) and "reverse_noise" in data:
            raise ValueError("'reverse_noise' was removed: the warm start is always noised with a real ε (eq. 18-20, "
                             "seeded per user at inference); delete the field")
        return data


class LGCDLossWeights(_Section):
    """Weights of the loss terms (eq. 26-27 add them unweighted: all 1)."""

    diff: float = Field(default=1.0, ge=0)  # L_diff (eq. 17)
    guess: float = Field(default=1.0, ge=0)  # L_guess (eq. 22)
    align: float = Field(default=1.0, ge=0)  # L_align (eq. 21)
    pseudo_rec: float = Field(default=1.0, ge=0)  # L_rec of pseudo rows, against 1 for real overlap rows (eq. 25, 27)


# Fields of the flat `lgcd` section before it was split, and where each one lives now.
_LGCD_MOVED = {
    **{f: f"{section}.{f}" for section, model in (("diffusion", LGCDDiffusion), ("architecture", LGCDArchitecture),
                                                  ("training", LGCDTraining), ("ablations", LGCDAblations),
                                                  ("interpretation", LGCDInterpretation))
       for f in model.model_fields},
    **{f"{term}_weight": f"loss_weights.{term}" for term in LGCDLossWeights.model_fields},
}


class LGCDConfig(_Section):
    """Conditional diffusion preference generator and MoE fusion (eq. 7-27), in sections.

    Change one field of a config with :meth:`with_updates` (``{"ablations.guesser": False}``).
    """

    diffusion: LGCDDiffusion = LGCDDiffusion()  # T, the β schedule, λ per target domain
    architecture: LGCDArchitecture = LGCDArchitecture()  # heads, experts, dropout, history length
    training: LGCDTraining = LGCDTraining()  # epochs, batches, learning rates, seed
    ablations: LGCDAblations = LGCDAblations()  # the Table 3 switches (all on = the full model)
    interpretation: LGCDInterpretation = LGCDInterpretation()  # our readings where the paper is ambiguous
    loss_weights: LGCDLossWeights = LGCDLossWeights()  # weights of L_diff, L_guess, L_align, pseudo L_rec

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: object) -> object:
        """A YAML written for the flat section: say where each of its fields lives now."""
        moved = [f"'{key}' is now '{_LGCD_MOVED[key]}'" for key in data if key in _LGCD_MOVED] if isinstance(data, dict) else []
        if moved:
            raise ValueError(f"the lgcd section is split into sections: {', '.join(moved)}")
        return data

    def with_updates(self, updates: dict[str, object]) -> LGCDConfig:
        """A validated copy with dotted fields replaced, e.g. ``{"training.seed": 1, "ablations.moe": False}``."""
        data = self.model_dump()
        for path, value in updates.items():
            section, _, field = path.partition(".")
            if section not in data or field not in data[section]:
                raise KeyError(f"LGCDConfig has no field {path!r}")
            data[section][field] = value
        return type(self).model_validate(data)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


# Ablation variants of LGCD (Table 3): variant name -> the LGCDConfig switch it turns off (a dotted
# path for LGCDConfig.with_updates). A variant is reported as model ``lgcd_<variant>``.
VARIANT_SWITCHES: dict[str, str] = {
    "wo_diffusion": "ablations.use_diffusion",
    "wo_overlap_diffusion": "ablations.overlap_diffusion",
    "wo_pseudo_diffusion": "ablations.pseudo_diffusion",
    "wo_alignment": "ablations.alignment_loss",
    "wo_guesser": "ablations.guesser",
    "wo_moe": "ablations.moe",
    "wo_cyclic": "ablations.cyclic_batches",
}
# The SASRec baselines the `baselines` stage trains, in this order: name -> (mode, the `evaluation`
# section holding its config). Modes: ``single`` (one model per domain) and ``mixed`` (one over all items).
SASREC_BASELINES: dict[str, tuple[Literal["single", "mixed"], Literal["sasrec", "sasrec_bce"]]] = {
    "sasrec_single": ("single", "sasrec"),
    "sasrec_mixed": ("mixed", "sasrec"),
    "sasrec_bce_single": ("single", "sasrec_bce"),  # the public SASRec's recipe (BCE, one negative per position)
    "sasrec_bce_mixed": ("mixed", "sasrec_bce"),
}
BASELINES = (*SASREC_BASELINES, "pretrained_encoder", "popularity", "lgcd_wo_diffusion")


class BaselineSASRecConfig(_Section):
    """The SASRec baselines (single-domain and mixed), trained by the `baselines` stage (lgcd_core.model.train_sasrec).

    ``loss``: ``softmax`` is next-item cross-entropy; ``train_negatives`` None makes it a full softmax
    over the model's vocabulary, an integer a sampled softmax against that many uniform negatives
    shared by the batch. ``bce`` is the public SASRec's loss: binary cross-entropy of the positive and
    of ONE uniformly drawn negative per position (an item of the model's vocabulary that is not in the
    training row), averaged over real positions. Early stopping reads valid NDCG@10 every
    ``eval_every`` epochs, in ``selection_setting``, under ``selection_protocol`` (``sampled999``: the
    stored valid candidates; ``full``: every item of the target domain); test is never read.
    """

    d: int = Field(default=64, ge=4)  # hidden size
    n_layers: int = Field(default=2, ge=1)  # transformer layers
    n_heads: int = Field(default=1, ge=1)  # attention heads per layer; must divide d
    max_len: int = Field(default=50, ge=2)  # most recent items of a sequence the model reads
    positions: Literal["start", "end"] = "start"  # position ids count from the first item (prefix-exact) or the last column
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)  # dropout inside the model
    lr: float = Field(default=5e-3, gt=0)  # Adam learning rate
    weight_decay: float = Field(default=0.0, ge=0)  # Adam weight decay
    batch_size: int = Field(default=256, ge=1)  # sequences per batch
    max_epochs: int = Field(default=15, ge=1)  # most epochs; the best one on valid NDCG@10 is kept
    patience: int = Field(default=3, ge=1)  # stop after this many evaluations without a better valid NDCG@10
    eval_every: int = Field(default=1, ge=1)  # epochs between valid evaluations
    loss: Literal["softmax", "bce"] = "softmax"  # next-item cross-entropy, or BCE with one negative per position
    train_negatives: int | None = Field(default=1000, ge=1)  # softmax only: sampled-softmax negatives; null: full softmax
    item_bias: bool = True  # a learned per-item score bias, starting at log(1 + training count); false: none
    selection_setting: Literal["inter_domain", "mixed_history"] = "mixed_history"  # histories early stopping reads
    selection_protocol: Literal["sampled999", "full"] = "sampled999"  # candidates early stopping ranks

    @model_validator(mode="after")
    def _negatives(self) -> BaselineSASRecConfig:
        _heads_divide(self.d, self.n_heads, "")
        if self.loss == "bce" and self.train_negatives is not None:
            raise ValueError("train_negatives applies to loss 'softmax' only (bce draws one negative per position); "
                             "set it to null")
        return self


class PublicSASRecConfig(BaselineSASRecConfig):
    """The public SASRec's recipe (pmixer/SASRec.pytorch): the `sasrec_bce_*` baselines; same fields, its defaults.

    BCE with one uniform negative per position, no item bias, lr 1e-3, batch 128, up to 200 epochs
    with valid NDCG@10 every 5 epochs and patience counted in those evaluations. A YAML section sets
    only what it changes; the rest stays this recipe.
    """

    loss: Literal["softmax", "bce"] = "bce"
    positions: Literal["start", "end"] = "end"  # its rows are always max_len wide: the last item is position max_len - 1
    train_negatives: int | None = Field(default=None, ge=1)
    item_bias: bool = False  # the public SASRec scores h · e_item only
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=128, ge=1)
    max_epochs: int = Field(default=200, ge=1)
    eval_every: int = Field(default=5, ge=1)
    patience: int = Field(default=5, ge=1)  # evaluations, i.e. 25 epochs without a better valid NDCG@10


class ReferenceRow(_Section):
    """A published row shown beside ours (e.g. the paper's Table 1): values keyed 'A:HR@10'."""

    label: str  # the row's name in the report, e.g. "paper: LGCD"
    split: str = "test"  # the split the values were measured on
    setting: Literal["inter_domain", "mixed_history"] = "inter_domain"  # the histories they were measured with
    values: dict[str, float]  # metric -> value, keyed '<domain>:<metric>@<k>'


class EvaluationConfig(_Section):
    """Candidates, metrics, seeds and the models the `evaluation` stage scores."""

    n_negatives: int = Field(default=999, ge=1)  # sampled negatives ranked with each target (the paper: 999)
    candidate_seed: Seed = 2026  # seeds the negatives, drawn once per split
    ks: list[Annotated[int, Field(ge=1)]] = Field(default=[1, 5, 10], min_length=1)  # cut-offs of HR@k and NDCG@k
    seeds: list[Seed] = Field(default=[0], min_length=1)  # every trained model is trained once per seed
    baselines: list[str] = list(BASELINES)  # the baselines trained and scored (BASELINES)
    variants: list[str] = []  # the Table 3 LGCD variants trained and scored (VARIANT_SWITCHES)
    lgcd_reads_target_history: bool = True  # mixed_history: LGCD also reads target-domain items (ours)
    batch_size: int = Field(default=512, ge=1)  # cases scored per batch
    sasrec: BaselineSASRecConfig = BaselineSASRecConfig()  # sasrec_single, sasrec_mixed (full or sampled softmax)
    sasrec_bce: PublicSASRecConfig = PublicSASRecConfig()  # sasrec_bce_single, sasrec_bce_mixed: the public recipe
    paper_rows: list[ReferenceRow] = []  # published rows shown beside ours in report.md

    @model_validator(mode="after")
    def _names(self) -> EvaluationConfig:
        _distinct(self.ks, "ks")
        _distinct(self.seeds, "seeds")
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

    def sasrec_run(self, name: str) -> tuple[Literal["single", "mixed"], BaselineSASRecConfig]:
        """The mode and config of SASRec baseline ``name`` (a key of SASREC_BASELINES)."""
        mode, section = SASREC_BASELINES[name]
        return mode, getattr(self, section)


# --------------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------------


class RecommendationsConfig(_Section):
    """The `recommendations` stage: top-K target-domain items per single-domain and held-out user (lgcd_core.serving).

    Scores are ``h_user · e_item`` (eq. 25). Up to ``faiss_above`` target-domain items the top K is an
    exact sort of every score; above it a FAISS inner-product index proposes candidates that are then
    re-scored exactly, so both paths give the same list (ties: the lower item_idx first).
    """

    k: int = Field(default=20, ge=1)  # items recommended per user
    read_target_history: bool = True  # users with target-domain items: LGCD also reads them, as evaluation.lgcd_reads_target_history
    faiss_above: int = Field(default=50_000, ge=0)  # target domains with more items than this search through FAISS
    batch_size: int = Field(default=512, ge=1)  # users scored per batch
    sample_users: int = Field(default=10, ge=0)  # users shown in the stage's metadata table
    sample_seed: Seed = 0  # seeds which users that table shows


class DatasetConfig(_Section):
    """The whole YAML of one dataset."""

    name: str = Field(pattern=rf"^{NAME_PATTERN.pattern}$")  # the YAML's file stem
    description: str = ""  # free text for the reader of the YAML
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")  # torch device of every stage that runs
    # a model: auto (CUDA when available), cpu, mps, cuda, cuda:1
    train_processes: int = Field(default=1, ge=1)  # data-parallel processes (accelerate launch) of pretraining and LGCD training
    source: SourceConfig  # raw_interactions, raw_items
    domains: DomainNames  # display names of A and B
    filter: FilterConfig = FilterConfig()  # filtered_interactions
    split: SplitConfig = SplitConfig()  # sequences
    text_encoder: TextEncoderConfig = TextEncoderConfig()  # item_text_embeddings
    llm: LLMConfig = LLMConfig()  # pseudo_texts
    grounding: GroundingConfig = GroundingConfig()  # grounded_items
    pseudo_overlap: PseudoOverlapConfig = PseudoOverlapConfig()  # pseudo_overlap_sequences
    pretrain: PretrainConfig = PretrainConfig()  # pretrained_encoders
    lgcd: LGCDConfig = LGCDConfig()  # lgcd_model
    evaluation: EvaluationConfig = EvaluationConfig()  # baselines, evaluation (and lgcd_model's seeds and variants)
    recommendations: RecommendationsConfig = RecommendationsConfig()  # recommendations

    @model_validator(mode="after")
    def _denoiser_heads(self) -> DatasetConfig:
        _heads_divide(self.pretrain.d, self.lgcd.architecture.n_heads, "lgcd.architecture.")  # LGCD's d is pretrain.d
        return self

    # ---- paths -----------------------------------------------------------------------------

    def source_dir(self) -> Path:
        """The raw data folder (environment override applied), not checked for existence.

        A relative path is relative to the repository root, except for the ``synthetic`` source, whose
        generated files are outputs like any other: relative to the data root (``LGCD_DATA_ROOT``).
        """
        raw = os.environ.get(self.source.path_env, "") if self.source.path_env else ""
        path = Path(raw or self.source.path).expanduser()
        if path.is_absolute():
            return path
        return (output_root() if self.source.format == "synthetic" else REPO_ROOT) / path

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
# included), declared with the stage in `lgcd_core.stages` (`Stage.config_keys`; rename a field there
# too). A stage's version hashes only these, so editing one marks that stage (and, through data
# versions, its downstream) stale and nothing upstream: a λ edits `lgcd` only, so it re-runs
# `lgcd_model` and `evaluation`, never `baselines`.
STAGE_CONFIG_KEYS: dict[str, tuple[str, ...]] = {stage.name: stage.config_keys for stage in STAGES}


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


def _duplicate_key(node: yaml.Node | None) -> yaml.Node | None:
    """The first mapping key given twice in a composed YAML tree (PyYAML keeps the last one silently), or None."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                return key
            seen.add(key.value if isinstance(key, yaml.ScalarNode) else id(key))
            if (found := _duplicate_key(value)) is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        return next((found for item in node.value if (found := _duplicate_key(item)) is not None), None)
    return None


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text()
        twice = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))  # nodes only: nothing is constructed
        if twice is not None:
            raise ConfigError(f"{path}: not valid YAML at line {twice.start_mark.line + 1}, column "
                              f"{twice.start_mark.column + 1}: duplicate key {twice.value!r}")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _validation_problems(exc: ValidationError) -> str:
    """One clause per error: the field's dotted path and pydantic's message, never the input value."""
    return "; ".join(
        (f"field '{'.'.join(str(p) for p in err['loc'])}': " if err["loc"] else "") + err["msg"].removeprefix("Value error, ")
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
