"""LLM backends: model resolution, and the OpenAI-compatible HTTP backend against a local server."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest

from lgcd_core.config import ConfigError, DatasetConfig, GenerationConfig, HttpBackendConfig, LLMConfig
from lgcd_core.language.generation_cache import GenerationCache, cache_key
from lgcd_core.language.llm_backends import HttpBackend, TransformersBackend, complete_list_criteria
from lgcd_core.language.llm_base import GenerationTimer, resolve_llm
from lgcd_core.language.parsing import parse_answer
from lgcd_core.language.pseudo_text import GenerationError, generate_pseudo_texts


def test_default_llm_resolves_to_the_packaged_gguf():
    folder, gguf = resolve_llm("default", None)
    assert (Path(folder) / gguf).is_file() and gguf.endswith(".gguf")
    assert resolve_llm("Qwen/Qwen2.5-0.5B-Instruct", None) == ("Qwen/Qwen2.5-0.5B-Instruct", None)


def test_http_payload_and_url():
    greedy = HttpBackend(HttpBackendConfig(base_url="http://h:1/v1/", model="m"), GenerationConfig(max_new_tokens=9))
    assert greedy.url == "http://h:1/v1/chat/completions"
    body = greedy.payload("hi")
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["max_tokens"] == 9 and body["temperature"] == 0.0
    sampled = HttpBackend(HttpBackendConfig(base_url="http://h:1", model="m"), GenerationConfig(do_sample=True, temperature=0.5))
    assert sampled.url == "http://h:1/v1/chat/completions" and sampled.payload("x")["temperature"] == 0.5
    assert sampled.payload("x")["max_tokens"] == 32 + 32 * 10  # a null cap fits the paper's n_K = 10 items
    assert HttpBackend(HttpBackendConfig(base_url="http://h:1", model="m"), GenerationConfig(), 3).max_new_tokens == 32 + 32 * 3


def test_generation_stops_once_a_row_has_its_n_complete_items():
    import torch

    vocab = {0: "Sure:", 1: "1. Wok", 2: "\n", 3: "2. Ladle", 4: "3. Tongs"}

    class Tokenizer:
        def decode(self, ids, skip_special_tokens=False):
            return "".join(vocab[int(i)] for i in ids)

    stop = complete_list_criteria(Tokenizer(), 1, 2)  # prompt = 1 token, n = 2 items
    ids = torch.tensor([[0, 1, 2, 3, 2],   # two finished lines: done
                        [0, 0, 2, 1, 2],   # a preamble and one item: not yet
                        [0, 1, 2, 2, 3]])  # the second item is still being written: not yet
    assert stop(ids, None).tolist() == [True, False, False]


def test_int8_quantisation_enters_the_cache_key_and_runs_on_the_cpu_only():
    plain, int8 = TransformersBackend(LLMConfig(), "cpu"), TransformersBackend(LLMConfig(quantize="int8"), "cpu")
    assert "quantize" not in plain.settings  # answers cached before the field existed keep their keys
    assert int8.settings == {**plain.settings, "quantize": "int8"}
    assert cache_key(plain.model_id, "t", "p", plain.settings) != cache_key(int8.model_id, "t", "p", int8.settings)
    with pytest.raises(ConfigError, match="CPU only"):
        TransformersBackend(LLMConfig(quantize="int8"), "mps")


def test_generation_timer_counts_the_first_pass_of_a_batch_as_prefill():
    import torch

    timer = GenerationTimer()
    for _ in range(2):  # two batches of one prefill pass and three decoding passes each
        start = timer.start_batch()
        for step in range(4):
            timer.before_forward()
            time.sleep(0.02 if step == 0 else 0.001)
            timer.after_forward()
        enc = {"input_ids": torch.ones(2, 5), "attention_mask": torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])}
        timer.end_batch(start, enc, torch.zeros(2, 3), 4)
    stats = timer.stats()
    assert stats["prefill_s"] >= 0.04 and stats["prefill_s"] > stats["decode_s"] > 0
    assert (stats["prompt_tokens"], stats["padded_prompt_tokens"], stats["answer_tokens"], stats["decode_slots"]) == (16, 20, 8, 12)


@pytest.mark.slow
def test_int8_swaps_every_linear_layer_and_answers_still_parse():
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    llm = LLMConfig(quantize="int8", n_descriptions=3, generation=GenerationConfig(max_new_tokens=48))
    backend = TransformersBackend(llm, "cpu")
    modules = list(backend.model.modules())
    assert any(isinstance(m, DynamicLinear) for m in modules)
    assert not any(type(m) is torch.nn.Linear for m in modules)
    prompt = "List 3 kitchen products for a tea lover, one per line, numbered."
    answers = backend.generate([prompt, prompt + " Short names only."])
    assert all(parse_answer(a.text, 3)[0] for a in answers), [a.text for a in answers]
    timing = backend.run_stats()["llm_timing"]
    assert timing["prefill_s"] > 0 and timing["decode_s"] > 0 and timing["answer_tokens"] == sum(a.n_tokens for a in answers)


# --------------------------------------------------------------------------------------------
# A scripted server: the behaviour for a prompt is chosen by a marker in the prompt text.
# --------------------------------------------------------------------------------------------


class Script:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.broken = True  # ALWAYS500 fails while broken

    def respond(self, prompt: str) -> tuple[int, bytes, float]:
        """(status, body, seconds to sleep first) for this prompt's n-th call."""
        with self.lock:
            self.calls[prompt] += 1
            n = self.calls[prompt]
        ok = json.dumps({"choices": [{"message": {"role": "assistant", "content": "1. Cast iron skillet\n2. Whisk"}}],
                         "usage": {"completion_tokens": 7}}).encode()
        if "SLOWONCE" in prompt and n == 1:
            return 200, ok, 2.0
        if "FAIL500ONCE" in prompt and n == 1:
            return 500, b"oops", 0.0
        if "BADJSONONCE" in prompt and n == 1:
            return 200, b"{not json", 0.0
        if "GARBAGE" in prompt:
            return 200, json.dumps({"choices": [{"message": {"content": "@@@ ### !!!"}}]}).encode(), 0.0
        if "ALWAYS500" in prompt and self.broken:
            return 500, b"down", 0.0
        return 200, ok, 0.0


@pytest.fixture()
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/chat/completions" and body["model"] == "tiny"
            status, payload, delay = script.respond(body["messages"][-1]["content"])
            time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and left

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    httpd.shutdown()
    httpd.server_close()


MARKERS = ["GOOD", "SLOWONCE", "FAIL500ONCE", "BADJSONONCE", "GARBAGE", "ALWAYS500"]


def tables():
    items = [{"item_idx": i + 1, "item_id": f"a{i}", "domain": "A", "title": m, "text": f"{m} snack"} for i, m in enumerate(MARKERS)]
    items.append({"item_idx": len(MARKERS) + 1, "item_id": "b0", "domain": "B", "title": "pan", "text": "pan"})
    seqs = [{"user_idx": i + 1, "user_id": f"u{i}", "user_type": "A-only", "items": [i + 1]} for i in range(len(MARKERS))]
    return pa.Table.from_pylist(items), pa.Table.from_pylist(seqs)


def config(url: str, **llm) -> DatasetConfig:
    http = {"base_url": url, "model": "tiny", "concurrency": 3, "timeout_s": 0.5, "max_retries": 2, "backoff_s": 0.01}
    return DatasetConfig.model_validate({"name": "t", "source": {"format": "synthetic", "path": "x"},
                                         "domains": {"A": "Food", "B": "Kitchen"},
                                         "llm": {"backend": "http", "http": http, "batch_size": 2, **llm}})


def test_http_backend_retries_each_failure_kind_and_keeps_what_was_saved(server, tmp_path):
    url, script = server
    items, seqs = tables()
    logs: list[str] = []
    with pytest.raises(GenerationError, match="1 of 6 requests failed"):
        generate_pseudo_texts(config(url), items, seqs, tmp_path, "cpu", log=logs.append)
    saved = GenerationCache(tmp_path)
    assert len(saved) == 5  # everything but the server that stays down
    calls = {m: sum(n for p, n in script.calls.items() if m in p) for m in MARKERS}
    assert calls == {"GOOD": 1, "SLOWONCE": 2, "FAIL500ONCE": 2, "BADJSONONCE": 2, "GARBAGE": 1, "ALWAYS500": 3}
    assert any("tokens/s" in line and "ETA" in line for line in logs)

    script.broken = False
    before = Counter(script.calls)
    table, stats = generate_pseudo_texts(config(url), items, seqs, tmp_path, "cpu", log=logs.append)
    new_calls = {p: n - before[p] for p, n in script.calls.items() if n != before[p]}
    assert len(new_calls) == 1 and "ALWAYS500" in next(iter(new_calls))  # only the failed one is retried
    assert stats["cached"] == 5 and stats["generated"] == 1 and stats["failed"] == 0
    rows = {r["prompt"].split("1. ")[1].split(" ")[0]: r for r in table.to_pylist()}
    assert rows["GARBAGE"]["usable"] is False and rows["GARBAGE"]["answer"] == "@@@ ### !!!"
    assert all(rows[m]["descriptions"] == ["Cast iron skillet", "Whisk"] for m in MARKERS if m != "GARBAGE")
    assert stats["unusable"] == 1 and stats["tokens_generated"] == 7


def test_on_failure_unusable_records_failed_users_without_caching_them(server, tmp_path):
    url, _ = server
    items, seqs = tables()
    table, stats = generate_pseudo_texts(config(url, on_failure="unusable"), items, seqs, tmp_path, "cpu", log=lambda m: None)
    assert table.num_rows == len(MARKERS) and stats["failed"] == 1 and stats["unusable"] == 2
    failed = [r for r in table.to_pylist() if "ALWAYS500" in r["prompt"]][0]
    assert failed["usable"] is False and failed["answer"] == "" and failed["cache_key"] not in GenerationCache(tmp_path)
