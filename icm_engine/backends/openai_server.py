"""A LanguageModel that asks an inference server (vLLM, SGLang, llama.cpp, llama-cpp-python).

ICM's cost is thousands of leave-one-out prompts that share long prefixes; servers batch them and
cache prefixes. This backend sends a batch's prompts in lexicographic order (a depth-first walk of
their prefix tree, as the local backend forwards them) with at most `concurrency` requests in
flight, so neighbours in flight share their prefixes and the server's prefix cache serves them.
Each request has a timeout; connection errors, 429 and 5xx answers are retried with exponential
backoff. What is sent and how answers are read is in server_protocol (pure functions).

Standard library only: no torch or transformers in this process.
"""
from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from http.client import HTTPException
from typing import Sequence

import numpy as np

from . import server_protocol as protocol
from .base import BackendStats, HiddenStatesUnavailable, LabelQuery, LanguageModel, ModelInfo, empty_label_rows

# Settings a user may change without a code edit (documented in docs/serving.md); none of them changes a
# number the server computes, so they are recorded in the run's model info, not its config.
CONCURRENCY_ENV = "ICM_SERVER_CONCURRENCY"
TIMEOUT_ENV = "ICM_SERVER_TIMEOUT_S"
RETRIES_ENV = "ICM_SERVER_RETRIES"
API_KEY_ENV = "ICM_SERVER_API_KEY"  # sent as a Bearer token; never stored
# vLLM and SGLang batch whatever is in flight; 16 keeps a 4-GPU 70B server busy without queueing
# a whole step. llama-cpp-python runs one request at a time on one cached sequence: a second
# request in flight could overtake and evict the prefix the next one needs.
DEFAULT_CONCURRENCY = {"llama-cpp-python": 1}
DEFAULT_CONCURRENCY_OTHER = 16
DEFAULT_TIMEOUT_S = 300.0  # one request; a 70B prompt of 30k uncached tokens stays well under it
DEFAULT_RETRIES = 4  # tries after the first: backoff 0.5 + 1 + 2 + 4 s, then the error
BACKOFF_START_S = 0.5
_RETRY_STATUS = {429, 500, 502, 503, 504}


class ServerError(ValueError):
    """The server could not be used; the message is one line naming the URL and the cause."""


class ServerClient:
    """JSON over HTTP with a timeout per request and retries with backoff on transient failures."""

    def __init__(self, root: str, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 api_key: str | None = None, backoff_s: float = BACKOFF_START_S) -> None:
        self.root, self.timeout_s, self.retries, self.backoff_s = root.rstrip("/"), timeout_s, retries, backoff_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def get(self, path: str) -> dict:
        return self._call("GET", path, None)

    def post(self, path: str, payload: dict) -> dict:
        return self._call("POST", path, json.dumps(payload).encode())

    def _call(self, method: str, path: str, body: bytes | None) -> dict:
        url = self.root + path
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=body, method=method, headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as error:
                message = error_message(error.read())
                if error.code not in _RETRY_STATUS or attempt == self.retries:
                    raise ServerError(f"{method} {url}: HTTP {error.code}: {message}") from None
            except (urllib.error.URLError, HTTPException, ConnectionError, socket.timeout, TimeoutError) as error:
                reason = getattr(error, "reason", None) or error
                if attempt == self.retries:
                    raise ServerError(f"cannot reach the inference server at {url}: {reason} "
                                      f"(after {attempt + 1} tries, timeout {self.timeout_s:g} s each)") from None
            except ValueError:  # not JSON: not an inference server's API
                raise ServerError(f"{method} {url}: the answer is not JSON; is this an inference server's URL?") from None
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")


def error_message(body: bytes) -> str:
    """The one line a server's error answer means: OpenAI's error.message, FastAPI's detail, or text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text.splitlines()[0][:300] if text else "(empty answer)"
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"]).splitlines()[0]
        for key in ("detail", "message", "error"):
            if data.get(key):
                return str(data[key]).splitlines()[0][:300]
    return text.splitlines()[0][:300]


def prefix_order(keys: Sequence) -> list[int]:
    """Indices in lexicographic order of their keys (token tuples or texts): a depth-first walk of the
    prompts' prefix tree, so prompts in flight together share the longest prefixes."""
    return sorted(range(len(keys)), key=lambda i: keys[i])


class ServerLM(LanguageModel):
    """Scores label words through an inference server; see the module docstring."""

    def __init__(self, spec: protocol.ServerSpec, client: ServerClient, info: ModelInfo, context_window: int,
                 bos_ids: tuple[int, ...], concurrency: int) -> None:
        self.spec, self.client, self.info = spec, client, info
        self.engine = spec.engine
        self.name, self.revision = info.name, info.revision
        self.stats = BackendStats()
        self.prompt_tokens = 0  # tokens of every prompt sent
        self.cached_tokens = 0  # of them, served by the server's prefix cache (where it says)
        self.cache_reported = False
        self._context_window, self._bos_ids, self.concurrency = context_window, bos_ids, concurrency
        self._segment_tokens: dict[str, tuple[int, ...]] = {}
        self._labels: dict[tuple[str, ...], tuple[tuple[int, ...], tuple[str, ...]]] = {}
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="icm-server")
        self._lock = threading.RLock()  # one batch at a time: the stats and memos are shared

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def sends_text(self) -> bool:
        """llama-cpp-python takes text prompts only: the server tokenizes the joined prompt."""
        return self.engine == "llama-cpp-python"

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self._tokens([text])[0])

    def cache_hit_rate(self) -> float | None:
        """Share of prompt tokens the server's prefix cache served, where the server reports it."""
        return self.cached_tokens / self.prompt_tokens if self.cache_reported and self.prompt_tokens else None

    def label_logprobs(self, queries: Sequence[LabelQuery]) -> np.ndarray:
        if not queries:
            return empty_label_rows()
        with self._lock:
            return self._label_logprobs(queries)

    @property
    def hidden_layer_count(self) -> int:
        raise HiddenStatesUnavailable(f"{self.name} is an inference server: its API returns token "
                                      "log-probabilities, not hidden states")

    def hidden_states(self, prompts, layers):
        return self.hidden_layer_count  # raises

    def label_token_ids(self, label_words: tuple[str, ...]) -> tuple[int, ...]:
        with self._lock:
            return self._label_info(tuple(label_words))[0]

    def raw_throughput(self, n_tokens: int = 1024) -> float:
        """Tokens per second of one prompt the prefix cache cannot serve (fresh random words; a benchmark,
        not counted in stats)."""
        words = ("river", "cable", "amber", "quiet", "lantern", "orbit", "velvet", "signal", "harbor", "maple")
        rng = random.Random(time.time_ns())
        n_tokens = max(8, min(n_tokens, self.context_window - 8))
        text, length = "", 0
        while length < n_tokens:  # a word is one to three tokens: grow, then measure
            text += " " + " ".join(rng.choice(words) for _ in range(max(8, (n_tokens - length) // 3)))
            length = self.count_tokens(text)
        saved = (self.stats.snapshot(), self.prompt_tokens, self.cached_tokens)
        started = time.perf_counter()
        self.label_logprobs([LabelQuery((text,), (" yes", " no"))])
        seconds = time.perf_counter() - started
        self.stats, (self.prompt_tokens, self.cached_tokens) = saved[0], saved[1:]
        return length / seconds

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ----- internals -----

    def _label_logprobs(self, queries: Sequence[LabelQuery]) -> np.ndarray:
        n_labels = len(queries[0].label_words)
        if any(len(q.label_words) != n_labels for q in queries):
            raise ValueError("all queries of one batch must have the same number of label words")
        self._tokens([s for q in queries for s in q.segments])  # fetch unseen segments concurrently
        prompts = [self._prompt_ids(q.segments) for q in queries]
        texts = ["".join(q.segments) for q in queries]
        started = time.perf_counter()
        jobs: list[tuple[int, str, dict]] = []
        for i in prefix_order(texts if self.sends_text else [tuple(p) for p in prompts]):
            label_ids = self._label_info(queries[i].label_words)[0]
            for path, payload in protocol.label_requests(self.engine, self.spec.model, prompts[i], texts[i], label_ids):
                jobs.append((i, path, payload))
        answers = self._run_all([(path, payload) for _, path, payload in jobs])
        by_query: dict[int, list[dict]] = {}
        for (i, _, _), answer in zip(jobs, answers):
            by_query.setdefault(i, []).append(answer)
        rows = np.empty((len(queries), n_labels), dtype=np.float64)
        for i, query in enumerate(queries):
            label_ids, pieces = self._label_info(query.label_words)
            try:
                rows[i] = protocol.parse_label_responses(self.engine, by_query[i], label_ids, pieces)
            except protocol.ServerProtocolError as error:
                raise ServerError(f"{self.spec.base_url}: {error}") from None
        self._count(jobs, answers, prompts, started)
        return rows

    def _run_all(self, requests: list[tuple[str, dict]]) -> list[dict]:
        """POST every request, in order, at most `concurrency` in flight; the first failure cancels the rest."""
        futures: list[Future] = [self._pool.submit(self.client.post, path, payload) for path, payload in requests]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def _count(self, jobs, answers, prompts, started: float) -> None:
        self.stats.model_calls += len(answers)
        self.stats.seconds += time.perf_counter() - started
        for (i, _, _), answer in zip(jobs, answers):
            sent, cached = protocol.usage_tokens(self.engine, answer)
            sent = len(prompts[i]) if sent is None else sent
            self.prompt_tokens += sent
            if cached is not None:
                self.cache_reported = True
                self.cached_tokens += cached
            self.stats.tokens_forwarded += sent - (cached or 0)
            self.stats.tokens_reused += cached or 0  # the server's prefix cache: the step's hit rate

    def _tokens(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Each text tokenized on its own (no BOS), memoized; unseen texts are asked for concurrently."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._segment_tokens))
        if missing:
            requests = [protocol.tokenize_request(self.engine, self.spec.model, t, add_special=False) for t in missing]
            for text, answer in zip(missing, self._run_all(requests)):
                tokens = protocol.parse_tokens(answer)
                if self.engine == "llama-cpp-python" and tokens[: len(self._bos_ids)] == list(self._bos_ids):
                    tokens = tokens[len(self._bos_ids):]  # its tokenize endpoint always adds BOS
                self._segment_tokens[text] = tuple(tokens)
        return [self._segment_tokens[t] for t in texts]

    def _prompt_ids(self, segments: Sequence[str]) -> list[int]:
        ids = list(self._bos_ids)
        for tokens in self._tokens(segments):
            ids.extend(tokens)
        if len(ids) > self._context_window:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the context window of {self._context_window} tokens")
        return ids

    def _label_info(self, label_words: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """(first token id of each label word, each id's text as the server prints it)."""
        if label_words not in self._labels:
            if not label_words:
                raise ValueError("at least one label word is needed")
            ids = []
            for word, tokens in zip(label_words, self._tokens(label_words)):
                if not tokens:
                    raise ValueError(f"label word {word!r} tokenizes to nothing")
                ids.append(tokens[0])
            if len(set(ids)) != len(ids):
                raise ValueError(f"label words must start with different tokens, but {label_words} start with {ids}")
            pieces: tuple[str, ...] = ()
            if self.engine == "llama-cpp-python":  # it names the generated token by its text, not its id
                pieces = tuple(self.client.post("/extras/detokenize", {"tokens": [i], "model": self.spec.model})["text"]
                               for i in ids)
            self._labels[label_words] = (tuple(ids), pieces)
        return self._labels[label_words]


# ----- connecting -----

def connect(spec_text: str, max_context: int | None = None, progress=None) -> ServerLM:
    """A ready ServerLM for `ENGINE+URL::MODEL`: the server is reached, its engine detected, the model
    checked, and one label query scored, so a server that cannot give log-probabilities fails here."""
    spec = protocol.parse_server_spec(spec_text)
    say = progress or (lambda message, fraction=None: None)
    timeout_s = _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, float)
    retries = _env_number(RETRIES_ENV, DEFAULT_RETRIES, int)
    client = ServerClient(spec.root, timeout_s, retries, os.environ.get(API_KEY_ENV))
    say(f"connecting to {spec.base_url}", 0.1)
    try:
        entry = protocol.served_model(client.get("/v1/models"), spec.model)
    except protocol.ServerProtocolError as error:
        raise ServerError(f"{spec.base_url}: {error}") from None
    engine = spec.engine or detect_engine(client)
    spec = protocol.ServerSpec(engine, spec.base_url, spec.model)
    version, reported_context = _engine_facts(client, engine, entry)
    context = min(c for c in (reported_context, max_context) if c) if (reported_context or max_context) else None
    if context is None:
        raise ServerError(f"{spec.base_url}: the {engine} server does not report its context window: give the "
                          "context size it was started with (--max-context N, or 'Max context' in the Run form)")
    bos_ids = tuple(protocol.parse_tokens(client.post(*protocol.tokenize_request(engine, spec.model, "", add_special=True))))
    concurrency = _env_number(CONCURRENCY_ENV, DEFAULT_CONCURRENCY.get(engine, DEFAULT_CONCURRENCY_OTHER), int)
    info = ModelInfo(
        name=spec.to_spec(), revision=f"{engine} {version}; model {entry.get('id')}", device=f"server {spec.root}",
        dtype="server", quantization="server",
        extra={"engine": engine, "engine_version": version, "server_model": entry, "url": spec.base_url,
               "mechanism": protocol.MECHANISMS[engine], "context_window": context - 1, "concurrency": concurrency,
               "timeout_s": timeout_s, "retries": retries,
               "tokenization": "the server tokenizes the joined prompt text" if engine == "llama-cpp-python"
               else "token ids: BOS + each segment tokenized by the server on its own"})
    # The label token is scored as a generated token: it takes one position of the server's window.
    lm = ServerLM(spec, client, info, context - 1, bos_ids, max(1, concurrency))
    say(f"checking that {engine} returns label log-probabilities", 0.6)
    lm.label_logprobs([LabelQuery(("The answer is",), (" yes", " no"))])
    lm.stats, lm.prompt_tokens, lm.cached_tokens = BackendStats(), 0, 0
    say(f"{spec.model} on {engine} {version} ready", 1.0)
    return lm


def detect_engine(client: ServerClient) -> str:
    """Which engine serves at client.root, from endpoints only that engine has."""
    probes = (("/openapi.json", lambda a: "llama.cpp python" in str((a.get("info") or {}).get("title", "")).lower(),
               "llama-cpp-python"),
              ("/get_model_info", lambda a: "model_path" in a, "sglang"),
              ("/props", lambda a: "default_generation_settings" in a, "llama.cpp"),
              ("/version", lambda a: "version" in a, "vllm"))
    quick = ServerClient(client.root, client.timeout_s, 0, None)
    quick._headers = client._headers
    for path, matches, engine in probes:
        try:
            if matches(quick.get(path)):
                return engine
        except ServerError:
            continue
    raise ServerError(f"{client.root}: cannot tell which inference server this is; name it in the model spec "
                      "(vllm+, sglang+, llamacpp+ or llama-cpp-python+URL::MODEL): a generic OpenAI server cannot "
                      "give exact label log-probabilities")


def _engine_facts(client: ServerClient, engine: str, entry: dict) -> tuple[str, int | None]:
    """(engine version, context window it reports or None)."""
    context = entry.get("max_model_len")
    try:
        if engine == "vllm":
            return str(client.get("/version").get("version")), context
        if engine == "sglang":
            info = client.get("/get_server_info")
            return str(info.get("version")), context or info.get("context_length")
        if engine == "llama.cpp":
            props = client.get("/props")
            settings = props.get("default_generation_settings") or {}
            return str(props.get("build_info", "unknown")), context or settings.get("n_ctx") or props.get("n_ctx")
        api = client.get("/openapi.json").get("info") or {}
        return str(api.get("version", "unknown")), context
    except ServerError:  # the version is provenance, not a requirement
        return "unknown", context


def _env_number(name: str, default, kind):
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ServerError(f"{name}={value!r} is not a number") from None
    if number < 0 or (kind is float and number == 0):
        raise ServerError(f"{name}={value!r} must be positive")
    return number
