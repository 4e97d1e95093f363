"""Trust boundaries: nothing read from disk runs code, and the LLM API key goes only to its server.

- A static scan (``ast``) of lgcd_core, lgcd_pipeline and bench for loaders that can run code
  (``torch.load`` without ``weights_only=True``, pickle, ``yaml.load``, ``np.load(allow_pickle=True)``),
  and the scanner's own table of planted snippets.
- Planted checkpoints (objects whose unpickling creates a marker file) where LGCD and SASRec
  training resume from: a clear DataError naming the file, and no marker.
- The HTTP backend against real local servers: redirects are refused (the server redirected to
  sees nothing), the key travels only in the Authorization header to ``base_url`` and appears in
  no error text, log record, ``repr`` or cache key.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import pathlib
import pickle
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from toy_data import synthetic_inputs

from lgcd_core.config import (
    BaselineSASRecConfig,
    ConfigError,
    DatasetConfig,
    GenerationConfig,
    HttpBackendConfig,
    LGCDConfig,
    PretrainConfig,
)
from lgcd_core.io import DataError
from lgcd_core.language.generation_cache import cache_key
from lgcd_core.language.llm_backends import HttpBackend
from lgcd_core.language.pseudo_text import GenerationError, generate_pseudo_texts
from lgcd_core.model import training
from lgcd_core.model.batches import Inputs
from lgcd_core.model.pretrain import pretrain_encoders
from lgcd_core.model.train_lgcd import train_lgcd
from lgcd_core.model.train_sasrec import train_sasrec

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# Static scan: loaders that can run code
# --------------------------------------------------------------------------------------------

SCANNED = ("lgcd_core", "lgcd_pipeline", "bench")
PICKLE_HOME = Path("lgcd_core/data/safe_pickle.py")  # the restricted unpickler may use pickle itself
PICKLE = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "_pickle.Unpickler"}
ALWAYS_UNSAFE = {
    "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
    "yaml.full_load_all", "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader",
    "pandas.read_pickle", "joblib.load", "dill.load", "dill.loads", "torch.serialization.load",
}  # fmt: skip
CHECKED_CALLS = {"torch.load", "numpy.load"}


def _module_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> module for every ``import m`` / ``import m.n`` / ``import m as x``."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
    return names


def _qualname(node: ast.expr, names: dict[str, str]) -> str | None:
    """``np.load`` -> 'numpy.load' when ``np`` is an imported module; None otherwise."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _qualname(node.value, names)
        return f"{base}.{node.attr}" if base else None
    return None


def _is_const(node: ast.expr | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _call_problem(qual: str, call: ast.Call | None) -> str | None:
    """What is wrong with this use of ``torch.load`` / ``numpy.load`` (None: provably safe)."""
    if call is None:
        return f"{qual} passed around: its arguments cannot be checked"
    if qual == "torch.load" and not _is_const(_keyword(call, "weights_only"), True):
        return "torch.load without a literal weights_only=True"
    flag = _keyword(call, "allow_pickle")
    if qual == "numpy.load" and (len(call.args) > 2 or not (flag is None or _is_const(flag, False))):
        return "numpy.load with allow_pickle not a literal False"
    return None


def find_unsafe_loads(source: str, filename: str, pickle_allowed: bool = False) -> list[str]:
    """``file:line: problem`` for every loader in ``source`` that could run code from the data it reads."""
    tree = ast.parse(source, filename)
    names = _module_aliases(tree)
    calls = {id(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
    risky = CHECKED_CALLS | ALWAYS_UNSAFE | (set() if pickle_allowed else PICKLE)
    found = []
    for node in ast.walk(tree):
        problem = None
        if isinstance(node, ast.ImportFrom):
            hits = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in risky]
            problem = f"from-import of {', '.join(hits)} (import the module so the call can be checked)" if hits else None
        elif isinstance(node, ast.Attribute) and (qual := _qualname(node, names)) in risky:
            problem = _call_problem(qual, calls.get(id(node))) if qual in CHECKED_CALLS else f"{qual} can run code"
        if problem:
            found.append(f"{filename}:{node.lineno}: {problem}")
    return found


def _scanned_files() -> Iterator[Path]:
    for top in SCANNED:
        yield from sorted((REPO / top).rglob("*.py"))


def test_no_loader_in_the_project_can_run_code():
    found = []
    for path in _scanned_files():
        rel = path.relative_to(REPO)
        found += find_unsafe_loads(path.read_text(encoding="utf-8"), str(rel), pickle_allowed=rel == PICKLE_HOME)
    assert len(list(_scanned_files())) > 20  # the scan did look at the project
    assert not found, "\n".join(found)


PLANTED_SNIPPETS = [
    ("torch-load-bare", "import torch\nx = torch.load('c.pt')\n", 2, "weights_only=True"),
    ("torch-load-false", "import torch\n\ntorch.load(p, weights_only=False)\n", 3, "weights_only=True"),
    ("torch-load-kwargs", "import torch\ntorch.load(p, **options)\n", 2, "weights_only=True"),
    ("torch-alias", "import torch as T\nT.load(p)\n", 2, "torch.load"),
    ("torch-passed-around", "import torch\nload = torch.load\n", 2, "passed around"),
    ("torch-from-import", "from torch import load\n", 1, "from-import of torch.load"),
    ("torch-serialization", "import torch\ntorch.serialization.load(p)\n", 2, "torch.serialization.load"),
    ("pickle-loads", "import pickle\npickle.loads(blob)\n", 2, "pickle.loads can run code"),
    ("pickle-unpickler", "import pickle\nclass U(pickle.Unpickler):\n    pass\n", 2, "pickle.Unpickler"),
    ("pickle-from-import", "from pickle import load as l\n", 1, "pickle.load"),
    ("yaml-load", "import yaml\nyaml.load(s)\n", 2, "yaml.load can run code"),
    ("yaml-unsafe-loader", "import yaml\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.UnsafeLoader)\n", 3, "yaml"),
    ("yaml-unsafe-load", "import yaml\nyaml.unsafe_load(s)\n", 2, "yaml.unsafe_load"),
    ("numpy-allow-pickle", "import numpy as np\nnp.load(p, allow_pickle=True)\n", 2, "allow_pickle"),
    ("numpy-positional", "import numpy as np\nnp.load(p, None, True)\n", 2, "allow_pickle"),
    ("pandas-read-pickle", "import pandas as pd\npd.read_pickle(p)\n", 2, "pandas.read_pickle"),
]


@pytest.mark.parametrize(("source", "line", "problem"), [c[1:] for c in PLANTED_SNIPPETS],
                         ids=[c[0] for c in PLANTED_SNIPPETS])
def test_scanner_catches_a_planted_loader(source, line, problem):
    found = find_unsafe_loads(source, "planted.py")
    assert found and found[0].startswith(f"planted.py:{line}: ") and problem in found[0], found


SAFE_SNIPPETS = [
    ("torch-weights-only", "import torch\ntorch.load(p, map_location='cpu', weights_only=True)\n"),
    ("numpy-default", "import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"),
    ("yaml-safe", "import yaml\nyaml.safe_load(s)\nyaml.safe_dump(d)\n"),
    ("pickle-dump-only", "import pickle\npickle.dumps({'a': 1})\n"),
    ("unrelated-load", "import json\njson.load(f)\nmodel.load_state_dict(s)\n"),
]


@pytest.mark.parametrize("source", [c[1] for c in SAFE_SNIPPETS], ids=[c[0] for c in SAFE_SNIPPETS])
def test_scanner_passes_safe_loaders(source):
    assert find_unsafe_loads(source, "safe.py") == []


def test_only_the_restricted_unpickler_may_use_pickle():
    source = (REPO / PICKLE_HOME).read_text(encoding="utf-8")
    assert find_unsafe_loads(source, str(PICKLE_HOME), pickle_allowed=True) == []
    assert any("pickle.Unpickler" in f for f in find_unsafe_loads(source, str(PICKLE_HOME)))


# --------------------------------------------------------------------------------------------
# Planted checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class Touch:
    """Unpickling it creates ``marker`` (via ``pathlib.Path.touch``)."""

    marker: Path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@dataclass
class Shell:
    """Unpickling it runs ``touch marker`` in a shell (via ``os.system``)."""

    marker: Path

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _plant_touch(path: Path, marker: Path) -> None:
    torch.save({"fingerprint": "x", "epoch": 1, "model": Touch(marker)}, path)


def _plant_shell(path: Path, marker: Path) -> None:
    torch.save({"fingerprint": "x", "history": {"epochs": [Shell(marker)]}}, path)


def _plant_raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"fingerprint": "x", "model": Touch(marker)}, protocol=2))


def _plant_garbage(path: Path, marker: Path) -> None:
    path.write_bytes(b"PK\x03\x04 not really a checkpoint")


def _plant_list(path: Path, marker: Path) -> None:
    torch.save([torch.zeros(2)], path)


PLANTED = [  # (id, plant, what the error says)
    ("reduce-path-touch", _plant_touch, "not a safe checkpoint (Unsupported global: GLOBAL getattr"),
    ("reduce-os-system", _plant_shell, "unsupported GLOBAL posix.system"),
    ("legacy-raw-pickle", _plant_raw_pickle, "not a safe checkpoint"),
    ("corrupt-archive", _plant_garbage, "not a safe checkpoint (PytorchStreamReader failed"),
    ("not-a-dict", _plant_list, "holds list, not a dict"),
]
LIVE = [c for c in PLANTED if c[0] in ("reduce-path-touch", "reduce-os-system", "legacy-raw-pickle")]


@pytest.mark.parametrize("plant", [c[1] for c in LIVE], ids=[c[0] for c in LIVE])
def test_planted_checkpoints_are_live_exploits(plant, tmp_path):
    """Control: the files below really run code when loaded the old way (``weights_only=False``)."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "checkpoint.pt", marker)
    with contextlib.suppress(RuntimeError):  # a raw pickle runs its code, then fails the magic-number check
        torch.load(tmp_path / "checkpoint.pt", weights_only=False)  # deliberately unsafe, on a tmp file only
    assert marker.exists()


LGCD = {"diffusion": {"T": 5}, "architecture": {"n_experts": 2},
        "training": {"epochs": 2, "patience": 5, "batch_size": 32, "overlap_per_batch": 8, "lr": 3e-3}}


def _cfg() -> DatasetConfig:
    return DatasetConfig(name="toy", source={"format": "synthetic", "path": "x"}, domains={"A": "a", "B": "b"},
                         pretrain=PretrainConfig(d=8, n_layers=1, epochs=1, batch_size=64),
                         lgcd=LGCDConfig.model_validate(LGCD))


@pytest.fixture(scope="module")
def lgcd_inputs(tmp_path_factory) -> tuple[dict, Path]:
    torch.set_num_threads(1)
    data = synthetic_inputs(n_overlap=40, n_a_only=20, n_b_only=20, n_valid=20, seed=0)
    enc_dir = tmp_path_factory.mktemp("enc")
    pretrain_encoders(_cfg(), Inputs(**data), enc_dir, "cpu", log=lambda *_: None)
    return data, enc_dir


def _train(lgcd_inputs: tuple[dict, Path], out: Path, log: Callable[[str], None] = lambda *_: None) -> dict:
    data, enc_dir = lgcd_inputs
    return train_lgcd(_cfg().lgcd, Inputs(**data), enc_dir, out, "cpu", log=log)


@pytest.mark.parametrize(("plant", "says"), [c[1:] for c in PLANTED], ids=[c[0] for c in PLANTED])
def test_planted_lgcd_checkpoint_raises_and_runs_nothing(plant, says, lgcd_inputs, tmp_path):
    out = tmp_path / "lgcd"
    out.mkdir()
    ckpt, marker = out / "checkpoint.pt", tmp_path / "pwned"
    plant(ckpt, marker)
    with pytest.raises(DataError) as err:
        _train(lgcd_inputs, out)
    message = str(err.value)
    assert message.startswith(f"{ckpt}: ") and says in message and "delete it to retrain" in message
    assert "weights_only" not in message  # torch's advice to load it unsafely is not passed on
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # left for inspection, nothing else written


def _leaves(obj: object) -> Iterator[object]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key
            yield from _leaves(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _leaves(value)
    else:
        yield obj


def test_genuine_lgcd_checkpoint_holds_plain_data_and_resumes(lgcd_inputs, tmp_path, monkeypatch):
    out = tmp_path / "lgcd"
    save = training.save_checkpoint

    def save_then_crash(path: Path, checkpoint: dict) -> None:
        save(path, checkpoint)
        raise KeyboardInterrupt("crash after the first epoch")

    with monkeypatch.context() as patch:
        patch.setattr(training, "save_checkpoint", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            _train(lgcd_inputs, out)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    plain = (torch.Tensor, int, float, str, bool, type(None))
    assert all(isinstance(leaf, plain) for leaf in _leaves(ckpt)), {type(x) for x in _leaves(ckpt)}
    lines: list[str] = []
    stats = _train(lgcd_inputs, out, log=lines.append)
    assert any(line.startswith("LGCD: resuming from") and "after epoch 1" in line for line in lines)
    assert stats["epochs"] == 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["done"]  # the stage removes it once published
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


N_ITEMS = 12
ITEMS = pa.table({"item_idx": pa.array(range(1, N_ITEMS + 1), pa.int32()), "domain": ["A"] * 6 + ["B"] * 6})
SEQUENCES = pa.table({"user_idx": pa.array(range(10), pa.int32()),
                      "items": pa.array([[1 + (s + j) % 6 if j % 2 else 7 + (s + j) % 6 for j in range(6)]
                                         for s in range(10)], pa.list_(pa.int32()))})
CASES = pa.table({"case_id": pa.array([0, 1], pa.int32()), "split": ["valid"] * 2,
                  "user_idx": pa.array([10, 11], pa.int32()), "history": pa.array([[1, 8], [2, 9]], pa.list_(pa.int32())),
                  "target": pa.array([10, 3], pa.int32()), "target_domain": ["B", "A"]})
SASREC = BaselineSASRecConfig(d=8, n_layers=1, max_len=6, max_epochs=1, batch_size=8, patience=1,
                              train_negatives=None, selection_protocol="full")


def _train_sasrec(out: Path) -> dict:
    torch.set_num_threads(1)
    return train_sasrec(Inputs(ITEMS, SEQUENCES, CASES), "single", SASREC, 1, out, "cpu", log=lambda _: None)


def test_planted_baseline_checkpoint_raises_and_runs_nothing(tmp_path):
    out = tmp_path / "sasrec_single_seed1"
    out.mkdir()
    path, marker = out / "checkpoint_A.pt", tmp_path / "pwned"
    _plant_touch(path, marker)
    with pytest.raises(DataError, match="not a safe checkpoint") as err:
        _train_sasrec(out)
    assert str(err.value).startswith(f"{path}: ") and not marker.exists()
    assert [p.name for p in out.iterdir()] == [path.name]


# --------------------------------------------------------------------------------------------
# The HTTP backend's API key
# --------------------------------------------------------------------------------------------

KEY = "sk-test-4f2a9c-SECRET"
KEY_ENV = "LGCD_TEST_LLM_KEY"
OK = json.dumps({"choices": [{"message": {"content": "1. Whisk"}}], "usage": {"completion_tokens": 3}}).encode()


@dataclass
class Server:
    """A local server that records every request (method, path, headers) and answers with ``respond``."""

    respond: Callable[[BaseHTTPRequestHandler], tuple[int, dict, bytes]]
    requests: list[dict] = field(default_factory=list)
    url: str = ""


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
            status, headers, body = server.respond(self)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = answer

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture()
def serve() -> Iterator[Callable[[Callable], Server]]:
    """Start servers on 127.0.0.1 (port 0); all are shut down after the test."""
    running = []

    def start(respond: Callable[[BaseHTTPRequestHandler], tuple[int, dict, bytes]]) -> Server:
        server = Server(respond)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        running.append(httpd)
        server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return server

    yield start
    for httpd in running:
        httpd.shutdown()
        httpd.server_close()


def _backend(url: str, **http) -> HttpBackend:
    settings = {"timeout_s": 5, "max_retries": 1, "backoff_s": 0, "max_reply_bytes": 1_000_000, **http}
    server = HttpBackendConfig(base_url=url, model="tiny", api_key_env=KEY_ENV, **settings)
    return HttpBackend(server, GenerationConfig(max_new_tokens=8))


def _echo(handler: BaseHTTPRequestHandler) -> bytes:
    return f"you sent Authorization: {handler.headers.get('Authorization')}".encode()


HTTP_CASES = [  # (id, respond(handler, other server url), error pieces ({a}, {b}: the two servers), requests to A)
    ("redirect-302-other-port", lambda h, b: (302, {"Location": f"{b}/v1/chat/completions"}, b""),
     ["HTTP 302 redirect from {a}/v1/chat/completions to {b}/v1/chat/completions not followed"], 1),
    ("redirect-301", lambda h, b: (301, {"Location": f"{b}/x"}, b""), ["HTTP 301", "{a}/v1/chat/completions", "{b}/x"], 1),
    ("redirect-303", lambda h, b: (303, {"Location": f"{b}/x"}, b""), ["HTTP 303", "{b}/x"], 1),
    ("redirect-307", lambda h, b: (307, {"Location": f"{b}/x"}, b""), ["HTTP 307", "{b}/x"], 1),
    ("redirect-308", lambda h, b: (308, {"Location": f"{b}/x"}, b""), ["HTTP 308", "{b}/x"], 1),
    ("redirect-relative", lambda h, b: (302, {"Location": "/v2/elsewhere"}, b""),
     ["redirect from {a}/v1/chat/completions to /v2/elsewhere"], 1),
    ("redirect-no-location", lambda h, b: (302, {}, b""), ["HTTP 302", "(no Location header)"], 1),
    ("ok-200", lambda h, b: (200, {"Content-Type": "application/json"}, OK), None, 1),
    ("unauthorized-401", lambda h, b: (401, {}, _echo(h)), ["HTTP 401 (not retried)"], 1),
    ("echoed-key-500", lambda h, b: (500, {}, _echo(h)), ["failed after 2 attempts: HTTP 500"], 2),
    ("echoed-key-malformed-200", lambda h, b: (200, {}, _echo(h)), ["contains the API key: refused"], 1),
    ("echoed-key-in-the-answer", lambda h, b: (200, {}, json.dumps({"choices": [{"message": {"content": _echo(h).decode()}}]})
                                                .encode()), ["contains the API key: refused"], 1),
    ("deeply-nested-json", lambda h, b: (200, {}, b"[" * 200_000 + b"]" * 200_000), ["malformed response (RecursionError)"], 2),
    ("reply-too-long", lambda h, b: (200, {}, b" " * 3_000_000 + OK), ["longer than max_reply_bytes = 1000000"], 2),
]


@pytest.mark.parametrize(("respond", "pieces", "calls"), [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES])
def test_http_backend_sends_the_key_only_to_base_url(respond, pieces, calls, serve, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    b = serve(lambda h: (200, {}, OK))
    a = serve(lambda h: respond(h, b.url))
    backend = _backend(a.url)
    answer = backend.request("GOOD")
    if pieces is None:
        assert answer.error is None and answer.text == "1. Whisk"
    else:
        assert answer.text == "" and all(p.format(a=a.url, b=b.url) in answer.error for p in pieces), answer.error
    assert len(a.requests) == calls and b.requests == []  # server B never sees a request, let alone the key
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in a.requests)
    leaks = [answer.error or "", caplog.text, repr(backend), backend.model_id, json.dumps(backend.settings),
             cache_key(backend.model_id, "template", "GOOD", backend.settings)]
    assert not [text for text in leaks if KEY in text]
    assert KEY_ENV in repr(backend)


def test_a_trickling_reply_times_out_on_the_whole_request_not_per_read(monkeypatch):
    """One byte every 0.2 s keeps every socket read alive; the request's total deadline still ends it."""
    monkeypatch.setenv(KEY_ENV, KEY)

    class Trickle(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", str(len(OK)))
            self.end_headers()
            try:
                for byte in OK:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        backend = _backend(f"http://127.0.0.1:{httpd.server_address[1]}", timeout_s=1.0, max_retries=0)
        started = time.monotonic()
        answer = backend.request("GOOD")
        assert time.monotonic() - started < 3.0  # len(OK) bytes at 5/s would take ~15 s
        assert answer.text == "" and "timeout_s = 1 s" in answer.error
    finally:
        httpd.shutdown()
        httpd.server_close()


def _dataset(url: str) -> DatasetConfig:
    http = {"base_url": url, "model": "tiny", "api_key_env": KEY_ENV, "max_retries": 0, "timeout_s": 5}
    return DatasetConfig.model_validate({"name": "t", "source": {"format": "synthetic", "path": "x"},
                                         "domains": {"A": "Food", "B": "Kitchen"},
                                         "llm": {"backend": "http", "http": http, "batch_size": 2}})


def test_redirect_fails_the_stage_naming_both_urls_and_not_the_key(serve, monkeypatch, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, KEY)
    b = serve(lambda h: (200, {}, OK))
    a = serve(lambda h: (302, {"Location": f"{b.url}/v1/chat/completions"}, b""))
    items = pa.Table.from_pylist([{"item_idx": 1, "item_id": "a0", "domain": "A", "title": "tea", "text": "tea"},
                                  {"item_idx": 2, "item_id": "b0", "domain": "B", "title": "pot", "text": "pot"}])
    seqs = pa.Table.from_pylist([{"user_idx": 1, "user_id": "u", "user_type": "A-only", "items": [1]}])
    lines: list[str] = []
    with pytest.raises(GenerationError) as err:
        generate_pseudo_texts(_dataset(a.url), items, seqs, tmp_path, "cpu", log=lines.append)
    message = str(err.value)
    assert f"from {a.url}/v1/chat/completions to {b.url}/v1/chat/completions" in message
    assert b.requests == [] and KEY not in message + caplog.text + "\n".join(lines)
    assert not [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


URLS = [  # (id, base_url, whether a plain-http warning is logged)
    ("http-remote-name", "http://example.com", True),
    ("http-remote-port-v1", "http://example.com:8000/v1", True),
    ("http-private-ip", "http://10.0.0.5:8000", True),
    ("https-remote", "https://example.com", False),
    ("http-127.0.0.1", "http://127.0.0.1:8000", False),
    ("http-127.x.y.z", "http://127.5.6.7:8000", False),
    ("http-localhost", "http://LocalHost:8000/v1", False),
    ("http-ipv6-loopback", "http://[::1]:8000", False),
]


@pytest.mark.parametrize(("url", "warns"), [c[1:] for c in URLS], ids=[c[0] for c in URLS])
def test_plain_http_to_a_remote_host_warns_at_construction(url, warns, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    with caplog.at_level(logging.WARNING, logger="lgcd.llm"):
        _backend(url)
    warnings = [r.getMessage() for r in caplog.records if r.name == "lgcd.llm"]
    assert bool(warnings) == warns
    assert all(url in w and "API key and prompts travel unencrypted" in w and KEY not in w for w in warnings)


BAD_KEYS = [  # (id, value of the variable, None: unset)
    ("unset", None, "unset or empty"),
    ("empty", "", "unset or empty"),
    ("blank", "   ", "unset or empty"),
    ("header-injection", f"{KEY}\r\nX-Injected: 1", "not allowed in an HTTP header"),
    ("non-ascii", f"{KEY}\u2019", "not allowed in an HTTP header"),
]


@pytest.mark.parametrize(("value", "says"), [c[1:] for c in BAD_KEYS], ids=[c[0] for c in BAD_KEYS])
def test_bad_api_key_variable_is_a_clear_error_naming_the_variable(value, says, monkeypatch):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(ConfigError) as err:
        _backend("http://127.0.0.1:1")
    assert KEY_ENV in str(err.value) and says in str(err.value) and KEY not in str(err.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "localhost:8000", "http:///v1"],
                         ids=["file", "ftp", "no-scheme", "no-host"])
def test_base_url_must_be_http_or_https_with_a_host(url, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ConfigError, match="expected an http:// or https:// URL") as err:
        _backend(url)
    assert repr(url) in str(err.value)


def test_no_key_configured_sends_no_authorization_header(serve):
    a = serve(lambda h: (200, {}, OK))
    backend = HttpBackend(HttpBackendConfig(base_url=a.url, model="tiny"), GenerationConfig())
    assert backend.request("GOOD").error is None and "Authorization" not in a.requests[0]["headers"]
