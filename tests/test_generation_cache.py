"""Generation cache, resume after a kill, and the pseudo_texts stage with a fake backend."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lgcd_core.language.generation_cache import GenerationCache, cache_key
from lgcd_core.language.pseudo_text import SCHEMA, generate_pseudo_texts

REPO = Path(__file__).resolve().parent.parent

# A job module shared by the killed subprocess and the test that resumes it, so both build the
# same tables, config and backend identity.
JOB = '''
import sys, time
import pyarrow as pa
from lgcd_core.config import DatasetConfig
from lgcd_core.language.llm_base import Answer

N_USERS = 12


def tables():
    items = [{"item_idx": i, "item_id": f"i{i}", "domain": "A" if i <= 2 * N_USERS else "B",
              "title": f"thing {i}", "text": f"{'Food' if i <= 2 * N_USERS else 'Kitchen'} thing number {i}" + " extra" * (i % 5)}
             for i in range(1, 2 * N_USERS + 5)]
    seqs = [{"user_idx": u + 1, "user_id": f"u{u}", "user_type": "A-only", "items": [2 * u + 1, 2 * u + 2]}
            for u in range(N_USERS)]
    seqs.append({"user_idx": N_USERS + 1, "user_id": "o", "user_type": "overlap", "items": [1, 2 * N_USERS + 1]})
    return pa.Table.from_pylist(items), pa.Table.from_pylist(seqs)


def config(pseudo_overlap=None, grounding=None, **llm):
    return DatasetConfig.model_validate({"name": "t", "source": {"format": "synthetic", "path": "x"},
                                         "domains": {"A": "Food", "B": "Kitchen"}, "llm": {"batch_size": 2, **llm},
                                         "pseudo_overlap": pseudo_overlap or {}, "grounding": grounding or {}})


class FakeBackend:
    model_id = "fake-llm"
    settings = {"backend": "fake"}

    def __init__(self, delay=0.0):
        self.delay = delay
        self.calls = []

    def stream(self, prompts, batch_size):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            time.sleep(self.delay)
            self.calls.extend(chunk)
            yield [(start + j, Answer(answer_for(p), 4)) for j, p in enumerate(chunk)]


def answer_for(prompt):
    if "number 3 " in prompt:
        return "Sure! I cannot help with that."
    return "Sure! Here they are:\\n1. Cast iron skillet\\n2. Whisk " + str(len(prompt))


if __name__ == "__main__":
    from lgcd_core.language.pseudo_text import generate_pseudo_texts
    items, seqs = tables()
    generate_pseudo_texts(config(), items, seqs, sys.argv[1], "cpu", log=lambda m: None, backend=FakeBackend(0.4))
'''


@pytest.fixture()
def job(tmp_path):
    path = tmp_path / "resume_job.py"
    path.write_text(JOB)
    spec = importlib.util.spec_from_file_location("resume_job", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_key_changes_with_each_input():
    base = cache_key("m", "tpl", "prompt", {"max_new_tokens": 8})
    assert base == cache_key("m", "tpl", "prompt", {"max_new_tokens": 8})
    variants = [cache_key("m2", "tpl", "prompt", {"max_new_tokens": 8}), cache_key("m", "tpl2", "prompt", {"max_new_tokens": 8}),
                cache_key("m", "tpl", "prompt2", {"max_new_tokens": 8}), cache_key("m", "tpl", "prompt", {"max_new_tokens": 9})]
    assert len({base, *variants}) == 5 and len(base) == 64


def test_cache_survives_reload_and_a_truncated_last_line(tmp_path):
    first = GenerationCache(tmp_path)
    first.append([{"key": "a", "answer": "1. Wok", "n_tokens": 3}, {"key": "b", "answer": "", "n_tokens": 0}])
    with open(first._shard, "a") as fh:
        fh.write('{"key": "c", "answer": "1. Ladl')  # killed mid-write
    second = GenerationCache(tmp_path)
    assert "a" in second and "b" in second and "c" not in second
    second.append([{"key": "c", "answer": "1. Ladle", "n_tokens": 3}])
    assert second._shard != first._shard
    assert GenerationCache(tmp_path).get("c")["answer"] == "1. Ladle"


def test_rerun_generates_nothing_and_keeps_unusable_answers(tmp_path, job):
    items, seqs = job.tables()
    backend = job.FakeBackend()
    table, stats = generate_pseudo_texts(job.config(), items, seqs, tmp_path, "cpu", log=lambda m: None, backend=backend)
    assert table.column_names == ["user_idx", "source_domain", "target_domain", "prompt", "answer", "descriptions", "usable",
                                  "cut", "cache_key"]
    assert table.num_rows == job.N_USERS and stats["generated"] == job.N_USERS and stats["cached"] == 0
    assert table.column("user_idx").to_pylist() == list(range(1, job.N_USERS + 1))
    row = table.slice(1, 1).to_pylist()[0]  # user 2 has item 3 in their history
    assert row["usable"] is False and row["descriptions"] == [] and row["answer"].startswith("Sure!")
    assert stats["unusable"] == 1 and stats["unusable_share"] == pytest.approx(1 / job.N_USERS, abs=1e-4)
    assert [len(p) for p in backend.calls] == sorted(len(p) for p in backend.calls)  # shortest prompt first
    assert set(table.column("target_domain").to_pylist()) == {"B"}

    again = job.FakeBackend()
    table2, stats2 = generate_pseudo_texts(job.config(), items, seqs, tmp_path, "cpu", log=lambda m: None, backend=again)
    assert again.calls == [] and stats2["generated"] == 0 and stats2["cached"] == job.N_USERS
    assert table2.equals(table)


def test_max_users_sample_is_seeded_and_recorded(tmp_path, job):
    items, seqs = job.tables()
    def run(seed):
        return generate_pseudo_texts(job.config({"max_users": 4, "sample_seed": seed}), items, seqs, tmp_path, "cpu",
                                     log=lambda m: None, backend=job.FakeBackend())

    (a, stats), (b, _), (c, _) = run(1), run(1), run(2)
    assert a.num_rows == 4 and stats["max_users"] == 4 and stats["n_single_domain_users"] == job.N_USERS
    assert a.column("user_idx").to_pylist() == b.column("user_idx").to_pylist() != c.column("user_idx").to_pylist()


def test_changed_generation_settings_regenerate(tmp_path, job):
    items, seqs = job.tables()
    generate_pseudo_texts(job.config(), items, seqs, tmp_path, "cpu", log=lambda m: None, backend=job.FakeBackend())
    other = job.config(template_a_to_b=str(tmp_path / "t.txt"))
    (tmp_path / "t.txt").write_text("Other wording for {target_domain}:\n{items}")
    backend = job.FakeBackend()
    _, stats = generate_pseudo_texts(other, items, seqs, tmp_path / "c", "cpu", log=lambda m: None, backend=backend)
    assert stats["generated"] == job.N_USERS and len(backend.calls) == job.N_USERS


def _saved_keys(cache_dir: Path) -> set[str]:
    return set(GenerationCache(cache_dir).records)


def test_kill_mid_stage_then_resume_regenerates_nothing_saved(tmp_path, job):
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "resume_job.py"), str(cache_dir)], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while len(_saved_keys(cache_dir)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = _saved_keys(cache_dir)
    assert proc.returncode == -signal.SIGKILL
    assert 4 <= len(saved) < job.N_USERS

    items, seqs = job.tables()
    backend = job.FakeBackend()
    table, stats = generate_pseudo_texts(job.config(), items, seqs, cache_dir, "cpu", log=lambda m: None, backend=backend)
    assert stats["cached"] == len(saved) and stats["generated"] == job.N_USERS - len(saved)
    regenerated = set(table.filter(pc.is_in(table.column("prompt"), pa.array(backend.calls))).column("cache_key").to_pylist())
    assert not regenerated & saved and len(backend.calls) == job.N_USERS - len(saved)
    assert table.num_rows == job.N_USERS and set(table.column("cache_key").to_pylist()) == _saved_keys(cache_dir)


def test_answer_key_is_independent_of_the_user(tmp_path, job):
    """Two users with the same history share one answer (generated once)."""
    items, seqs = job.tables()
    rows = seqs.to_pylist()
    rows[1]["items"] = rows[0]["items"]
    backend = job.FakeBackend()
    table, stats = generate_pseudo_texts(job.config(), items, pa.Table.from_pylist(rows, schema=seqs.schema), tmp_path,
                                         "cpu", log=lambda m: None, backend=backend)
    keys = table.column("cache_key").to_pylist()
    assert keys[0] == keys[1] and len(backend.calls) == job.N_USERS - 1 and stats["generated"] == job.N_USERS - 1


class CappedBackend:
    """Every answer is exactly at the token cap; user 1's list stops mid-item, the others run past n items."""

    model_id = "capped"
    settings = {"backend": "capped"}

    def __init__(self, cap):
        self.cap = cap

    def stream(self, prompts, batch_size):
        from lgcd_core.language.llm_base import Answer

        long = "\n".join(f"{i}. Kitchen gadget {i}" for i in range(1, 8))
        yield [(i, Answer("1. Cast iron skillet\n2. Whisk\n3. Stand mix" if "number 1 " in p else long, self.cap))
               for i, p in enumerate(prompts)]


def test_answers_cut_by_the_token_cap_lose_their_unfinished_item_and_are_counted(tmp_path, job):
    items, seqs = job.tables()
    cfg = job.config(n_descriptions=5, generation={"max_new_tokens": 20})
    table, stats = generate_pseudo_texts(cfg, items, seqs, tmp_path, "cpu", log=lambda m: None, backend=CappedBackend(20))
    rows = {r["user_idx"]: r for r in table.to_pylist()}
    assert rows[1]["cut"] and rows[1]["descriptions"] == ["Cast iron skillet", "Whisk"]  # "Stand mix" was unfinished
    assert not rows[2]["cut"] and len(rows[2]["descriptions"]) == 5  # went past 5 items: nothing lost
    assert stats["cut"] == 1 and stats["cut_share"] == pytest.approx(1 / job.N_USERS, abs=1e-4)
    assert stats["max_new_tokens"] == 20 and stats["n_descriptions"] == 5
    fine, fine_stats = generate_pseudo_texts(cfg, items, seqs, tmp_path / "b", "cpu", log=lambda m: None, backend=job.FakeBackend())
    assert fine_stats["cut"] == 0 and not any(fine.column("cut").to_pylist())  # 4 tokens, far below the cap


def test_prompt_asks_for_n_k_items_and_the_cap_fits_them(tmp_path, job):
    items, seqs = job.tables()
    table, stats = generate_pseudo_texts(job.config(grounding={"n_k": 7}), items, seqs, tmp_path, "cpu",
                                         log=lambda m: None, backend=job.FakeBackend())
    assert "Suggest 7 different Kitchen products" in table.column("prompt")[0].as_py()
    assert stats["n_descriptions"] == 7 and stats["max_new_tokens"] == 32 + 32 * 7 and stats["source"] == "llm"


@pytest.mark.parametrize("source", ["text", "collaborative"])
def test_llm_free_sources_generate_nothing(tmp_path, job, source):
    items, seqs = job.tables()
    backend = job.FakeBackend()
    table, stats = generate_pseudo_texts(job.config({"source": source}), items, seqs, tmp_path, "cpu",
                                         log=lambda m: None, backend=backend)
    assert table.num_rows == 0 and table.schema == SCHEMA and backend.calls == []
    assert stats["source"] == source and stats["n_users"] == 0
