"""The Ray backend: pseudo-texts as a Ray Data job on a local Ray with 2 actors, real offline SmolLM2.

Kept small (4 users, 16 new tokens, 2 prompts per batch) so it runs in the default suite: it checks
that the answers equal the in-process transformers backend's under greedy decoding, that both
backends share cache keys, and that a re-run (a resumed job) generates nothing.
"""

from __future__ import annotations

import pytest
from toy_data import demo_language_inputs

from lgcd_core.config import DatasetConfig
from lgcd_core.language.generation_cache import GenerationCache
from lgcd_core.language.pseudo_text import generate_pseudo_texts

N_USERS = 4

pytestmark = pytest.mark.ray


def _config(backend: str) -> DatasetConfig:
    return DatasetConfig.model_validate({
        "name": "t", "source": {"format": "synthetic", "path": "x"}, "domains": {"A": "Grocery", "B": "Kitchen"},
        "llm": {"backend": backend, "batch_size": 2, "history_items": 4, "n_descriptions": 3,
                "generation": {"max_new_tokens": 16}, "ray": {"workers": 2, "cpus_per_worker": 1}},
        "grounding": {"n_k": 3}, "pseudo_overlap": {"max_users": N_USERS},
    })


@pytest.fixture()
def no_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend must start a local Ray, whatever the caller's environment points at."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_ray_backend_matches_the_in_process_backend_and_resumes_from_the_cache(tmp_path, no_ray_address):
    import ray

    items, sequences = demo_language_inputs(N_USERS)
    local, local_stats = generate_pseudo_texts(_config("transformers"), items, sequences, tmp_path / "local", "cpu",
                                               log=lambda m: None)
    lines: list[str] = []
    remote, stats = generate_pseudo_texts(_config("ray"), items, sequences, tmp_path / "ray", "cpu", log=lines.append)
    assert not ray.is_initialized()  # the local Ray the stage started is shut down again
    assert stats["generated"] == N_USERS and stats["ray_workers"] == 2 and stats["ray_address"] == "local"
    assert stats["model"] == local_stats["model"]
    assert remote.column("answer").to_pylist() == local.column("answer").to_pylist()
    assert remote.column("cache_key").to_pylist() == local.column("cache_key").to_pylist()  # one cache for both
    assert all(remote.column("answer").to_pylist())
    assert len(GenerationCache(tmp_path / "ray")) == N_USERS

    again, again_stats = generate_pseudo_texts(_config("ray"), items, sequences, tmp_path / "ray", "cpu", log=lines.append)
    assert again_stats["cached"] == N_USERS and again_stats["generated"] == 0 and again.equals(remote)
