"""The HTTP backend over a fleet of OpenAI-compatible servers: spreading, failover, stats, and the config.

Every server is a tiny ``http.server`` on 127.0.0.1 (port 0) answering deterministically from the
prompt, so any endpoint gives the same answer and a fleet run must equal a one-server run. Servers
can fail (HTTP 500), stall past the client's timeout after some answers, or redirect. Stalls wait on
an event that teardown sets, so nothing outlives a test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
from pydantic import ValidationError

from lgcd_core.config import ConfigError, DatasetConfig, GenerationConfig, HttpBackendConfig, load_dataset_config
from lgcd_core.language.generation_cache import GenerationCache
from lgcd_core.language.llm_backends import HttpBackend
from lgcd_core.language.pseudo_text import GenerationError, generate_pseudo_texts
from lgcd_pipeline.metadata import stats_metadata

KEY = "sk-fleet-77c1-SECRET"
KEY_ENV = "LGCD_TEST_FLEET_KEY"
STALL_S = 3.0  # how long a stalled server sits on a request (the client gives up after timeout_s)


def answer_for(prompt: str) -> str:
    """The deterministic answer every server gives to ``prompt``."""
    word = hashlib.sha256(prompt.encode()).hexdigest()[:6]
    return f"1. {word} skillet\n2. {word} whisk"


@dataclass
class Server:
    """One fake endpoint: ``mode`` is ok | fail500 | redirect; ``stall_after``: answers before it stalls."""

    mode: str = "ok"
    stall_after: int | None = None
    redirect_to: str = ""
    fail_marked: bool = True  # prompts holding ALWAYS500 get HTTP 500 while this holds
    received: int = 0
    keys: set = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def respond(self, prompt: str) -> tuple[int, dict, bytes]:
        with self.lock:
            self.received += 1
            n = self.received
        if self.stall_after is not None and n > self.stall_after:
            self.release.wait(STALL_S)
        if self.mode == "fail500" or (self.fail_marked and "ALWAYS500" in prompt):
            return 500, {}, b"down"
        if self.mode == "redirect":
            return 302, {"Location": self.redirect_to}, b""
        body = {"choices": [{"message": {"role": "assistant", "content": answer_for(prompt)}}], "usage": {"completion_tokens": 7}}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.keys.add(self.headers.get("Authorization"))
            status, headers, payload = server.respond(body["messages"][-1]["content"])
            try:
                self.send_response(status)
                for name, value in {"Content-Length": str(len(payload)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and moved on

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture()
def serve() -> Iterator[Callable[..., Server]]:
    """Start servers on 127.0.0.1; all are released and shut down after the test."""
    running: list[tuple[ThreadingHTTPServer, Server]] = []

    def start(**behaviour) -> Server:
        server = Server(**behaviour)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        server.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        running.append((httpd, server))
        return server

    yield start
    for httpd, server in running:
        server.release.set()
        httpd.shutdown()
        httpd.server_close()


def tables(n: int, marker: str = "", every: int = 0) -> tuple[pa.Table, pa.Table]:
    """``n`` A-only users with one item each; every ``every``-th item's text carries ``marker``."""
    items = [{"item_idx": i + 1, "item_id": f"a{i}", "domain": "A", "title": f"t{i}",
              "text": f"snack {i} {marker if every and i % every == 0 else ''}".strip()} for i in range(n)]
    items.append({"item_idx": n + 1, "item_id": "b0", "domain": "B", "title": "pan", "text": "pan"})
    seqs = [{"user_idx": i + 1, "user_id": f"u{i}", "user_type": "A-only", "items": [i + 1]} for i in range(n)]
    return pa.Table.from_pylist(items), pa.Table.from_pylist(seqs)


def config(urls: list[str], **http) -> DatasetConfig:
    where = {"base_url": urls[0]} if len(urls) == 1 else {"endpoints": urls}
    server = {**where, "model": "tiny", "concurrency": 2, "timeout_s": 2.0, "max_retries": 1, "backoff_s": 0.0,
              "cooldown_s": 60.0, **http}
    return DatasetConfig.model_validate({"name": "t", "source": {"format": "synthetic", "path": "x"},
                                         "domains": {"A": "Food", "B": "Kitchen"},
                                         "llm": {"backend": "http", "http": server, "batch_size": 4},
                                         "pseudo_overlap": {"max_users": None}})


def run(urls: list[str], n: int, cache, **http) -> tuple[pa.Table, dict]:
    items, seqs = tables(n)
    return generate_pseudo_texts(config(urls, **http), items, seqs, cache, "cpu", log=lambda m: None)


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    return a.select(["user_idx", "answer", "cache_key"]).equals(b.select(["user_idx", "answer", "cache_key"]))


# --------------------------------------------------------------------------------------------
# Spreading and failover
# --------------------------------------------------------------------------------------------


def test_a_fleet_gives_the_answers_of_one_server_and_spreads_the_requests(serve, tmp_path):
    one, fleet = serve(), [serve(), serve(), serve()]
    single, _ = run([one.url], 24, tmp_path / "one")
    table, stats = run([s.url for s in fleet], 24, tmp_path / "fleet")
    assert same_rows(table, single) and all(a.startswith("1. ") for a in table.column("answer").to_pylist())
    counters = stats["endpoints"]
    assert list(counters) == [s.url for s in fleet]
    for server in fleet:
        c = counters[server.url]
        assert c["requests"] == server.received == c["answers"] > 0 and c["failures"] == 0
        assert c["seconds"] > 0 and c["answers_per_s"] > 0
    assert sum(c["answers"] for c in counters.values()) == 24 == stats["generated"]
    assert stats_metadata(stats)["endpoints"].value == counters  # the asset's Dagster metadata, as JSON


def test_a_failing_endpoint_is_benched_and_its_requests_move_on(serve, tmp_path, caplog):
    good, bad, other = serve(), serve(mode="fail500"), serve()
    single, _ = run([good.url], 20, tmp_path / "one")
    with caplog.at_level(logging.WARNING, logger="lgcd.llm"):
        table, stats = run([good.url, bad.url, other.url], 20, tmp_path / "fleet")
    assert same_rows(table, single) and stats["failed"] == 0
    assert len(GenerationCache(tmp_path / "fleet")) == 20  # nothing lost: every answer is saved
    c = stats["endpoints"][bad.url]
    assert c["answers"] == 0 and c["failures"] == c["requests"] == bad.received > 0
    assert bad.received <= 2 * 2  # at most its 2 slots, each with 1 retry, before the bench holds
    assert stats["endpoints"][good.url]["answers"] + stats["endpoints"][other.url]["answers"] == 20
    assert any(bad.url in r.getMessage() and "HTTP 500" in r.getMessage() for r in caplog.records)


def test_a_server_that_stalls_mid_run_loses_no_answer(serve, tmp_path):
    steady, stalling = serve(), serve(stall_after=3)
    single, _ = run([steady.url], 16, tmp_path / "one")
    table, stats = run([steady.url, stalling.url], 16, tmp_path / "fleet", timeout_s=1.0)
    assert same_rows(table, single) and stats["failed"] == 0
    c = stats["endpoints"][stalling.url]
    assert c["answers"] == 3 and c["failures"] >= 1
    assert stalling.received <= 3 + 2  # a stalled request moves on at once: no retry on the stalled server
    assert stats["endpoints"][steady.url]["answers"] == 13


def test_requests_every_endpoint_fails_are_not_saved_and_alone_are_retried(serve, tmp_path):
    a, b = serve(), serve()
    items, seqs = tables(9, marker="ALWAYS500", every=3)
    cfg = config([a.url, b.url], cooldown_s=0.0)
    with pytest.raises(GenerationError, match="3 of 9 requests failed") as err:
        generate_pseudo_texts(cfg, items, seqs, tmp_path, "cpu", log=lambda m: None)
    assert all(f"{s.url}: failed after 2 attempts: HTTP 500" in str(err.value) for s in (a, b))  # each endpoint's error
    assert len(GenerationCache(tmp_path)) == 6

    a.fail_marked = b.fail_marked = False
    before = a.received + b.received
    _, stats = generate_pseudo_texts(cfg, items, seqs, tmp_path, "cpu", log=lambda m: None)
    assert stats["cached"] == 6 and stats["generated"] == 3 and a.received + b.received - before == 3


# --------------------------------------------------------------------------------------------
# Security: the key goes to every endpoint and nowhere else
# --------------------------------------------------------------------------------------------


def test_the_key_reaches_only_the_fleet_and_a_redirect_moves_the_request_on(serve, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    elsewhere = serve()
    redirecting, good = serve(mode="redirect", redirect_to=elsewhere.url + "/chat/completions"), serve()
    table, stats = run([redirecting.url, good.url], 6, tmp_path, api_key_env=KEY_ENV)
    assert stats["failed"] == 0 and table.num_rows == 6
    assert elsewhere.received == 0 and redirecting.received > 0
    assert redirecting.keys == good.keys == {f"Bearer {KEY}"}
    backend = HttpBackend(config([redirecting.url, good.url], api_key_env=KEY_ENV).llm.http, GenerationConfig())
    leaks = [caplog.text, repr(backend), json.dumps(stats), json.dumps(backend.settings), backend.model_id]
    assert not [text for text in leaks if KEY in text] and "not followed" in caplog.text


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_base_url_alone_still_configures_one_server():
    server = HttpBackendConfig(base_url="http://127.0.0.1:8000/v1", model="m")
    assert server.urls == ["http://127.0.0.1:8000/v1"] and server.endpoints == []
    backend = HttpBackend(server, GenerationConfig())
    assert backend.url == "http://127.0.0.1:8000/v1/chat/completions" and backend.fleet.slots == server.concurrency


def test_endpoints_configure_a_fleet_with_slots_per_endpoint():
    server = HttpBackendConfig(endpoints=["http://127.0.0.1:1", "http://127.0.0.1:2/v1"], model="m", concurrency=3)
    backend = HttpBackend(server, GenerationConfig())
    assert [e.url for e in backend.fleet.endpoints] == ["http://127.0.0.1:1/v1/chat/completions",
                                                        "http://127.0.0.1:2/v1/chat/completions"]
    assert backend.fleet.slots == 6 and "127.0.0.1:2" in repr(backend)


@pytest.mark.parametrize(("http", "says"), [
    ({"base_url": "http://127.0.0.1:1", "endpoints": ["http://127.0.0.1:2"]}, "either base_url"),
    ({}, "either base_url"),
    ({"endpoints": ["http://127.0.0.1:1", "http://127.0.0.1:1"]}, "more than once"),
], ids=["both", "neither", "repeated"])
def test_servers_must_be_named_one_way(http, says, tmp_path):
    with pytest.raises(ValidationError, match=says):
        HttpBackendConfig(model="m", **http)
    path = tmp_path / "t.yaml"
    path.write_text(json.dumps({"source": {"format": "synthetic", "path": "x"}, "domains": {"A": "Food", "B": "Kitchen"},
                                "llm": {"backend": "http", "http": {"model": "m", **http}}}))
    with pytest.raises(ConfigError, match=says):
        load_dataset_config(path)


def test_a_bad_endpoint_url_is_refused_by_name(monkeypatch):
    server = HttpBackendConfig(endpoints=["http://127.0.0.1:1", "ftp://example.com"], model="m")
    with pytest.raises(ConfigError, match="'ftp://example.com': expected an http:// or https:// URL"):
        HttpBackend(server, GenerationConfig())
