"""A fleet of OpenAI-compatible endpoints: which endpoint gets the next request, and what each one did.

The HTTP backend (:class:`lgcd_core.language.llm_backends.HttpBackend`) sends every request through
a :class:`Fleet` (a single ``base_url`` is a fleet of one):

- at most ``concurrency`` requests are in flight per endpoint; a request takes a slot on the endpoint
  with the smallest share of its slots in use, so a faster server frees slots sooner and gets more work;
- a request that fails on an endpoint (after its retries there, or at once when it stalls past
  ``timeout_s``) moves to an endpoint it has not tried yet, and fails for good only once every
  endpoint has failed it;
- an endpoint where a request failed is benched for ``cooldown_s``: requests that still have an
  endpoint that is not benched to try wait for that one instead, so a dead server costs a few
  failures per cool-down rather than one per request;
- per-endpoint counters (requests sent, answers, failures, seconds spent on its requests) become
  the ``endpoints`` entry of the ``pseudo_texts`` stats, hence its Dagster metadata.

Waiting for a slot is bounded: a slot is only ever held by a request in progress, and a request
leaves its endpoint after at most ``max_retries + 1`` attempts of ``timeout_s`` each plus backoff.
Which endpoint answered is not part of the cache key: a fleet and a single server share answers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("lgcd.llm")


def chat_url(base_url: str) -> str:
    """The chat-completions URL of a server: ``{base}/chat/completions`` when base ends in /v1, else ``{base}/v1/...``."""
    base = base_url.rstrip("/")
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


@dataclass
class Endpoint:
    """One server: its slots in use, when its bench ends, and its counters (guarded by the fleet's lock)."""

    index: int
    base_url: str
    url: str
    concurrency: int
    in_flight: int = 0
    benched_until: float = 0.0
    requests: int = 0
    answers: int = 0
    failures: int = 0
    seconds: float = 0.0


class Fleet:
    """Slots on a list of endpoints, handed out least-loaded first, skipping benched endpoints while others are left."""

    def __init__(self, base_urls: list[str], concurrency: int, cooldown_s: float) -> None:
        self.endpoints = [Endpoint(i, url, chat_url(url), concurrency) for i, url in enumerate(base_urls)]
        self.cooldown_s = cooldown_s
        self._cond = threading.Condition()

    @property
    def slots(self) -> int:
        """Requests the whole fleet may have in flight at once."""
        return sum(e.concurrency for e in self.endpoints)

    def acquire(self, tried: set[int]) -> Endpoint | None:
        """A slot on an endpoint whose index is not in ``tried`` (waits for one to free); None once all were tried."""
        with self._cond:
            while True:
                untried = [e for e in self.endpoints if e.index not in tried]
                if not untried:
                    return None
                now = time.monotonic()
                up = [e for e in untried if e.benched_until <= now] or untried  # only benched ones left: use them
                free = [e for e in up if e.in_flight < e.concurrency]
                if free:
                    chosen = min(free, key=lambda e: (e.in_flight / e.concurrency, e.index))
                    chosen.in_flight += 1
                    return chosen
                benched = [e.benched_until - now for e in untried if e.benched_until > now]
                self._cond.wait(timeout=min(benched, default=None))  # woken by a release, or when a bench ends

    def release(self, endpoint: Endpoint, error: str | None) -> None:
        """Free the slot; ``error`` (already redacted) benches the endpoint for ``cooldown_s``."""
        with self._cond:
            endpoint.in_flight -= 1
            if error is not None and len(self.endpoints) > 1:
                endpoint.benched_until = time.monotonic() + self.cooldown_s
                log.warning("LLM endpoint %s failed a request (%s): no new requests for %.0f s while others are up",
                            endpoint.base_url, error, self.cooldown_s)
            self._cond.notify_all()

    def record(self, endpoint: Endpoint, ok: bool, seconds: float) -> None:
        """Count one attempt sent to ``endpoint``."""
        with self._cond:
            endpoint.requests += 1
            endpoint.answers += ok
            endpoint.failures += not ok
            endpoint.seconds += seconds

    def stats(self, wall_s: float) -> dict[str, dict]:
        """Counters by base URL, with answers per second of ``wall_s`` (the time spent streaming)."""
        with self._cond:
            return {e.base_url: {"requests": e.requests, "answers": e.answers, "failures": e.failures,
                                 "seconds": round(e.seconds, 3),
                                 "answers_per_s": round(e.answers / wall_s, 3) if wall_s > 0 else None}
                    for e in self.endpoints}
