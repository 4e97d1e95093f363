"""LLM backends for pseudo-text generation: a local transformers causal LM, or OpenAI-compatible servers.

(``llm.backend: ray`` and ``llama_cpp`` live in their own modules, :mod:`lgcd_core.language.ray_backend`
and :mod:`lgcd_core.language.llama_cpp_backend`; what all backends share is :mod:`lgcd_core.language.llm_base`.)

Every backend exposes the same small interface used by :mod:`lgcd_core.language.pseudo_text`:

- ``model_id`` and ``settings``: what the answers depend on (they enter the cache key, with the
  token cap resolved: ``LLMConfig.resolved`` sizes it for ``n_descriptions`` items);
- ``stream(prompts, batch_size)``: yields groups of ``(prompt index, Answer)`` as they complete,
  so the caller can save each group before the next one is generated;
- optionally ``run_stats()``: figures of the run for the stage's metadata (the HTTP backend's
  per-endpoint counters, the Ray backend's workers, the transformers backend's prompt and answer
  tokens and its time split between prefill and decoding).

A request that fails for good comes back as an :class:`Answer` with ``error`` set, never raised.

The transformers backend stops a row as soon as its answer holds ``llm.n_descriptions`` complete list
items (:func:`lgcd_core.language.parsing.count_complete_items`), so the token cap only bounds answers
that ramble; an OpenAI-compatible server stops at its end-of-answer token or the cap. The Ray
backend (:mod:`lgcd_core.language.ray_backend`) runs the transformers backend on Ray actors. On CPU,
``llm.quantize: int8`` swaps its ``nn.Linear`` layers for dynamically quantised int8 ones
(:func:`quantize_linear`); that changes the answers, so it enters ``settings`` (the cache key).

The HTTP backend spreads requests over one or more endpoints (:mod:`lgcd_core.language.fleet`). It
sends its API key (read from the environment variable named by ``api_key_env``) only to those
endpoints: redirects are never followed, and the key is kept out of ``repr``, logs, error texts and
cache keys. Plain ``http://`` to a host other than loopback logs a warning.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import ipaddress
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from functools import cached_property

from lgcd_core.config import ConfigError, GenerationConfig, HttpBackendConfig, LLMConfig
from lgcd_core.device import resolve_device
from lgcd_core.language.fleet import Endpoint, Fleet
from lgcd_core.language.llm_base import Answer, GenerationTimer, chat_text, resolve_llm, token_cap
from lgcd_core.language.parsing import count_complete_items

log = logging.getLogger("lgcd.llm")


# --------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------


def quantize_linear(model):  # -> torch.nn.Module
    """``model`` with every ``nn.Linear`` replaced by a dynamically quantised int8 one (CPU inference).

    Weights are stored in int8 and activations quantised on the fly, so matrix products run in int8:
    ~1.6x faster forward passes on CPU, but the logits change, hence greedy answers (SmolLM2-135M's
    ramble more: bench/results/llm_throughput.md). torch marks this API deprecated; it still runs on 2.13.
    """
    import torch
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


class TransformersBackend:
    """Batched generation with left padding; the chat template is applied when the tokenizer has one.

    Weights load on the first generation, so a run whose answers are all cached never loads them.
    """

    def __init__(self, llm: LLMConfig, device: str) -> None:
        self.llm = llm
        self.device = resolve_device(device)
        if llm.quantize != "none" and self.device != "cpu":
            raise ConfigError(f"llm.quantize: {llm.quantize!r} runs on the CPU only, the device is {self.device!r}")
        self.gen = llm.generation
        self.path, self.gguf = resolve_llm(llm.model, llm.gguf_file)
        self.model_id = f"{llm.model}|{self.gguf}" if self.gguf else llm.model
        self.max_new_tokens = token_cap(llm.generation, llm.n_descriptions)
        self.stop_after_items = llm.n_descriptions  # None: no early stop
        self.settings = {"backend": "transformers", **llm.generation.model_dump(), "max_new_tokens": self.max_new_tokens,
                         "stop_after_items": self.stop_after_items, **quantize_setting(llm.quantize)}
        self.timer = GenerationTimer()

    @cached_property
    def tokenizer(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        extra = {"gguf_file": self.gguf} if self.gguf else {}
        tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.llm.trust_remote_code, **extra)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    @cached_property
    def model(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM

        extra = {"gguf_file": self.gguf} if self.gguf else {}
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=dtype, trust_remote_code=self.llm.trust_remote_code, **extra
        ).to(self.device).eval()
        if self.llm.quantize == "int8":
            model = quantize_linear(model)
        model.register_forward_pre_hook(self.timer.before_forward)
        model.register_forward_hook(self.timer.after_forward)
        return model

    @property
    def use_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format(self, prompt: str) -> str:
        """The text the model sees for one user prompt."""
        return chat_text(self.tokenizer, prompt)

    def generate_kwargs(self) -> dict:
        """``model.generate`` settings from the YAML (sampling only when ``do_sample``)."""
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.gen.do_sample,
                  "pad_token_id": self.tokenizer.pad_token_id}
        if self.gen.do_sample:
            kwargs.update(temperature=self.gen.temperature, top_p=self.gen.top_p)
        if self.gen.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.gen.repetition_penalty
        return kwargs

    def generate(self, prompts: list[str]) -> list[Answer]:
        """One left-padded batch; seeded so that the same batch gives the same answers."""
        import torch

        enc = self.tokenizer([self.format(p) for p in prompts], return_tensors="pt", padding=True,
                             add_special_tokens=not self.use_chat).to(self.device)
        torch.manual_seed(self.gen.seed)
        extra = {}
        if self.stop_after_items:
            extra["stopping_criteria"] = complete_list_criteria(self.tokenizer, enc["input_ids"].shape[1], self.stop_after_items)
        model, kwargs = self.model, self.generate_kwargs()
        start = self.timer.start_batch()
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs, **extra)
        new = out[:, enc["input_ids"].shape[1]:].cpu()
        stop_ids = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                    *_as_list(self.model.generation_config.eos_token_id)}
        stop = torch.isin(new, torch.tensor(sorted(i for i in stop_ids if i is not None)))
        lengths = torch.where(stop.any(1), stop.int().argmax(1), torch.tensor(new.shape[1]))
        self.timer.end_batch(start, enc, new, int(lengths.sum()))
        return [
            Answer(self.tokenizer.decode(row[:n], skip_special_tokens=True).strip(), int(n))
            for row, n in zip(new, lengths.tolist())
        ]

    def stream(self, prompts: list[str], batch_size: int) -> Iterator[list[tuple[int, Answer]]]:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            yield list(enumerate(self.generate(chunk), start=start))

    def run_stats(self) -> dict:
        """Prompt and answer tokens, and seconds of prefill vs decoding, of this backend's batches so far."""
        return {"llm_timing": self.timer.stats()}


def quantize_setting(quantize: str) -> dict:
    """The cache-key entry of ``llm.quantize``: none for 'none', so answers cached before the field existed stay valid."""
    return {} if quantize == "none" else {"quantize": quantize}


def complete_list_criteria(tokenizer, prompt_length: int, n_items: int):  # -> transformers.StoppingCriteriaList
    """Stop a row once its new text holds ``n_items`` complete list items (checked when a line ends)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class CompleteList(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, prompt_length:]
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if new.shape[1] == 0:
                return done
            for row in range(new.shape[0]):
                if "\n" in tokenizer.decode(new[row, -1:]):
                    done[row] = count_complete_items(tokenizer.decode(new[row], skip_special_tokens=True)) >= n_items
            return done

    return StoppingCriteriaList([CompleteList()])


def _as_list(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP
# --------------------------------------------------------------------------------------------


class RetryableError(RuntimeError):
    """A failure worth retrying: timeout, connection error, HTTP 429/5xx, malformed response."""


class Stalled(RetryableError):
    """No answer within ``timeout_s``: the request moves to another endpoint at once when one is left."""


class KeyInReply(RuntimeError):
    """The reply holds the API key (a server echoing the request): refused, never cached or written, not retried."""


class RedirectRefused(RuntimeError):
    """The server answered 3xx: not followed (not retried), so the key and prompts never go elsewhere."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Follow no redirect (urllib would re-send the Authorization header): every 3xx becomes an HTTPError."""

    def redirect_request(self, req, fp, code, msg, headers, newurl) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def read_api_key(env_var: str | None) -> str:
    """The API key in ``env_var`` ('' when none is configured); ConfigError naming the variable, never the value."""
    if not env_var:
        return ""
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise ConfigError(f"llm.http.api_key_env: environment variable {env_var} is unset or empty")
    if not all(33 <= ord(c) <= 126 for c in key):
        raise ConfigError(f"llm.http.api_key_env: environment variable {env_var} holds characters that are not "
                          "allowed in an HTTP header (whitespace, control or non-ASCII)")
    return key


def is_loopback(host: str) -> bool:
    """Whether ``host`` is localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, sends_key: bool) -> None:
    """ConfigError unless http(s); warns when plain http goes to a host other than loopback."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"llm.http endpoint {url!r}: expected an http:// or https:// URL with a host")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        what = "the API key and prompts travel" if sends_key else "prompts travel"
        log.warning("llm.http endpoint %s uses plain http to a non-loopback host: %s unencrypted", url, what)


class HttpBackend:
    """``POST {endpoint}/v1/chat/completions`` over a :class:`Fleet` of one or more servers, from a bounded thread pool.

    Each request has a timeout and retries on its endpoint, then moves to another endpoint (see
    :mod:`lgcd_core.language.fleet`); ``run_stats`` reports what each endpoint did.
    """

    def __init__(self, server: HttpBackendConfig, gen: GenerationConfig, n_items: int | None = None) -> None:
        self.http = server
        self.gen = gen
        self.fleet = Fleet(server.urls, server.concurrency, server.cooldown_s)
        self.model_id = f"http|{server.model}"
        self.max_new_tokens = token_cap(gen, n_items)
        self.settings = {"backend": "http", **gen.model_dump(), "max_new_tokens": self.max_new_tokens}
        self._api_key = read_api_key(server.api_key_env)
        for url in server.urls:
            check_base_url(url, bool(self._api_key))
        self._stream_s = 0.0  # time spent in stream(), for the endpoints' answers per second

    def __repr__(self) -> str:
        urls = [e.url for e in self.fleet.endpoints]
        return f"HttpBackend(urls={urls!r}, model={self.http.model!r}, api_key_env={self.http.api_key_env!r})"

    @property
    def url(self) -> str:
        """The chat-completions URL of the first endpoint (the only one of a single ``base_url``)."""
        return self.fleet.endpoints[0].url

    def redact(self, text: str) -> str:
        """``text`` with the API key blanked out (a server may echo the request back in an error body)."""
        return text.replace(self._api_key, "<redacted>") if self._api_key else text

    def payload(self, prompt: str) -> dict:
        body = {
            "model": self.http.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_new_tokens,
            "temperature": self.gen.temperature if self.gen.do_sample else 0.0,
            "top_p": self.gen.top_p if self.gen.do_sample else 1.0,
            "seed": self.gen.seed,
        }
        if self.gen.repetition_penalty != 1.0:
            body["repetition_penalty"] = self.gen.repetition_penalty  # vLLM extension
        return body

    def request_once(self, prompt: str, url: str) -> Answer:
        """One POST to ``url``; raises RetryableError (Stalled on a timeout), RedirectRefused or HTTPError."""
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(url, json.dumps(self.payload(prompt)).encode(), headers, method="POST")
        deadline = time.monotonic() + self.http.timeout_s
        try:
            with _OPENER.open(req, timeout=self.http.timeout_s) as resp:
                raw = self._read_reply(resp, deadline)
        except urllib.error.HTTPError as exc:
            exc.close()
            if 300 <= exc.code < 400:
                location = exc.headers.get("Location", "(no Location header)")
                raise RedirectRefused(f"HTTP {exc.code} redirect from {url} to {location} not followed: "
                                      "the API key and prompts go only to the endpoints of llm.http") from None
            if exc.code == 429 or exc.code >= 500:
                raise RetryableError(f"HTTP {exc.code}") from exc
            raise
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            timed_out = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
            raise (Stalled if timed_out else RetryableError)(f"{type(exc).__name__}: {exc}") from exc
        if self._api_key and self._api_key.encode() in raw:
            raise KeyInReply(f"the reply from {url} contains the API key: refused (not cached, not written)")
        try:
            body = json.loads(raw)
            text = body["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
            usage = body.get("usage") if isinstance(body, dict) else None
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        except Exception as exc:  # whatever a malformed reply raises (RecursionError for deep nesting included)
            raise RetryableError(f"malformed response ({type(exc).__name__}): {raw[:120]!r}") from None
        return Answer(text.strip(), int(tokens) if isinstance(tokens, int) else len(text.split()))

    def _read_reply(self, resp, deadline: float) -> bytes:
        """The reply body, read in chunks against one deadline for the whole request and a size limit.

        A socket timeout alone bounds each read, so a server trickling one byte a second would never time
        out; here the request as a whole does.
        """
        limit, chunks, size = self.http.max_reply_bytes, [], 0
        while True:
            late = TimeoutError(f"no complete reply within timeout_s = {self.http.timeout_s:g} s")
            left = deadline - time.monotonic()
            if left <= 0:
                raise late
            sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)  # the reply's socket: its next read waits
            if sock is not None:  # at most until the deadline
                sock.settimeout(left)
            try:
                chunk = resp.read1(65536)
            except TimeoutError:
                raise late from None
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise RetryableError(f"malformed response: longer than max_reply_bytes = {limit}")
            chunks.append(chunk)

    def attempt(self, endpoint: Endpoint, prompt: str) -> tuple[Answer, str]:
        """One request to ``endpoint``, counted in its stats: (answer, 'ok' | 'retry' | 'stalled' | 'final')."""
        start = time.perf_counter()
        try:
            answer, outcome = self.request_once(prompt, endpoint.url), "ok"
        except Stalled as exc:
            answer, outcome = Answer("", 0, self.redact(str(exc))), "stalled"
        except RetryableError as exc:
            answer, outcome = Answer("", 0, self.redact(str(exc))), "retry"
        except (RedirectRefused, KeyInReply) as exc:
            answer, outcome = Answer("", 0, self.redact(str(exc))), "final"
        except urllib.error.HTTPError as exc:
            answer, outcome = Answer("", 0, f"HTTP {exc.code} (not retried)"), "final"
        self.fleet.record(endpoint, outcome == "ok", time.perf_counter() - start)
        return answer, outcome

    def request_on(self, endpoint: Endpoint, prompt: str, moves_on: bool) -> Answer:
        """Up to ``max_retries`` retries on ``endpoint``, waiting ``backoff_s * 2**r`` before retry r.

        A stall is retried only when no other endpoint is left to take it (``moves_on`` false).
        """
        for attempt in range(1, self.http.max_retries + 2):
            if attempt > 1:
                time.sleep(self.http.backoff_s * 2 ** (attempt - 2))
            answer, outcome = self.attempt(endpoint, prompt)
            if outcome in ("ok", "final"):
                return answer
            if outcome == "stalled" and moves_on:
                break
        return Answer("", 0, f"failed after {attempt} attempt{'s' if attempt > 1 else ''}: {answer.error}")

    def request(self, prompt: str) -> Answer:
        """The first answer of the endpoints tried in turn; when all fail, an Answer with each one's error."""
        n = len(self.fleet.endpoints)
        tried: set[int] = set()
        errors: list[str] = []
        while (endpoint := self.fleet.acquire(tried)) is not None:
            tried.add(endpoint.index)
            answer = self.request_on(endpoint, prompt, moves_on=len(tried) < n)
            self.fleet.release(endpoint, answer.error)
            if answer.error is None:
                return answer
            errors.append(answer.error if n == 1 else f"{endpoint.base_url}: {answer.error}")
        return Answer("", 0, "; ".join(errors))

    def stream(self, prompts: list[str], batch_size: int) -> Iterator[list[tuple[int, Answer]]]:
        """At most ``concurrency`` requests in flight per endpoint; completed answers are yielded in groups of ``batch_size``."""
        pool = concurrent.futures.ThreadPoolExecutor(self.fleet.slots)
        start = time.perf_counter()
        try:
            futures = {pool.submit(self.request, p): i for i, p in enumerate(prompts)}
            group: list[tuple[int, Answer]] = []
            for future in concurrent.futures.as_completed(futures):
                group.append((futures[future], future.result()))
                if len(group) >= batch_size:
                    yield group
                    group = []
            if group:
                yield group
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._stream_s += time.perf_counter() - start

    def run_stats(self) -> dict:
        """Per-endpoint counters for the stage's metadata: requests, answers, failures, seconds, answers_per_s."""
        return {"endpoints": self.fleet.stats(self._stream_s)}


