"""What ICM Studio sends to an inference server and how it reads the answers: pure functions only.

A server model is named by a spec, `ENGINE+URL::MODEL`, e.g.
`vllm+http://gpu-box:8000/v1::meta-llama/Llama-3.1-70B` or `openai+http://localhost:8080/v1::gemma`
(`openai+` asks the server which engine it is). Each engine gets the most exact way it offers to
read log P(label word's first token | prompt) over the whole vocabulary (MECHANISMS); every way
below keeps the prompt as a plain prefix, so the server's prefix cache serves the leave-one-out
prompts that share their demonstrations. Nothing here touches the network (openai_server does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Spec prefix -> engine. "openai" means: detect the engine from the server's own endpoints.
ENGINE_PREFIXES = {"openai": None, "vllm": "vllm", "sglang": "sglang", "llamacpp": "llama.cpp",
                   "llama-cpp-python": "llama-cpp-python"}
ENGINES = ("vllm", "sglang", "llama.cpp", "llama-cpp-python")
# A bias that makes greedy decoding pick the label token whatever the model prefers; the
# log-probability read back is computed before any bias (see MECHANISMS).
FORCE_BIAS = 100.0
# Label log-probabilities are normalized over the vocabulary: their probabilities add up to at most
# 1. Above this (in nats) a server reported them after its sampling constraints, not from the model.
NORMALIZATION_SLACK = 1e-3

MECHANISMS = {
    "vllm": "forced label token: /v1/completions on the prompt's token ids, max_tokens 1, allowed_token_ids "
            "[label id], logprobs 0; vLLM (V1, --logprobs-mode raw_logprobs, its default) reports the sampled "
            "token's log-probability from the raw logits, before the restriction; one request per label word",
    "sglang": "token_ids_logprob: /generate on input_ids, max_new_tokens 1, token_ids_logprob = the label ids, "
              "temperature 1 and no top-p/top-k (so its reported log-probabilities are the raw ones); one request per query",
    "llama.cpp": "forced label token: /completion on the prompt's token ids, n_predict 1, logit_bias +100 on the label "
                 "id, n_probs 1, post_sampling_probs false; llama-server reports the sampled token's probability "
                 "from the raw logits; one request per label word",
    "llama-cpp-python": "forced label token: /v1/completions on the prompt text, max_tokens 1, temperature 0, "
                        "logit_bias +100 on the label id, logprobs 0; llama-cpp-python computes log-probabilities from "
                        "the raw logits (the bias changes only the sampler's copy; needs logits_all, its server's "
                        "default); one request per label word. It takes text prompts only, so it tokenizes the joined "
                        "prompt itself",
}


class ServerProtocolError(ValueError):
    """A server answer that cannot give exact label log-probabilities; the message is one line."""


@dataclass(frozen=True)
class ServerSpec:
    engine: str | None  # None: detect
    base_url: str  # the OpenAI-compatible root, usually ending in /v1
    model: str

    @property
    def root(self) -> str:
        """The server's own root, where vLLM, SGLang and llama.cpp keep their non-OpenAI endpoints."""
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def to_spec(self) -> str:
        prefix = next(p for p, e in ENGINE_PREFIXES.items() if e == self.engine)
        return f"{prefix}+{self.base_url}::{self.model}"


def is_server_spec(name: str) -> bool:
    prefix, plus, rest = name.partition("+")
    return bool(plus) and prefix in ENGINE_PREFIXES and rest.startswith(("http://", "https://"))


def make_server_spec(url: str, model: str, engine: str = "openai") -> str:
    """The spec for --server-url/--server-model (engine: a prefix of ENGINE_PREFIXES)."""
    if engine not in ENGINE_PREFIXES:
        raise ValueError(f"server engine must be one of {tuple(ENGINE_PREFIXES)}, got {engine!r}")
    return f"{engine}+{url.rstrip('/')}::{model}"


def parse_server_spec(spec: str) -> ServerSpec:
    """ENGINE+URL::MODEL -> ServerSpec, or a one-line ValueError saying what is wrong."""
    prefix, plus, rest = spec.partition("+")
    if not plus or prefix not in ENGINE_PREFIXES:
        raise ValueError(f"server model {spec!r} must start with one of {', '.join(p + '+' for p in ENGINE_PREFIXES)}")
    url, sep, model = rest.rpartition("::")
    if not sep or not model.strip() or not url:
        raise ValueError(f"server model {spec!r} needs the model name after '::' (ENGINE+URL::MODEL, e.g. "
                         "vllm+http://localhost:8000/v1::meta-llama/Llama-3.1-70B)")
    if not url.startswith(("http://", "https://")) or len(url.split("//", 1)[1].strip("/")) == 0:
        raise ValueError(f"server URL {url!r} must be http://HOST:PORT/v1 or https://…")
    return ServerSpec(ENGINE_PREFIXES[prefix], url.rstrip("/"), model.strip())


# ----- label requests: (path relative to the server root, JSON payload) -----

def label_requests(engine: str, model: str, prompt_ids: list[int], prompt_text: str,
                   label_ids: tuple[int, ...]) -> list[tuple[str, dict]]:
    """The requests that score one prompt against the label ids (see MECHANISMS)."""
    if engine == "vllm":
        return [("/v1/completions", {
            "model": model, "prompt": list(prompt_ids), "max_tokens": 1, "temperature": 0.0, "logprobs": 0,
            "allowed_token_ids": [label], "return_tokens_as_token_ids": True}) for label in label_ids]
    if engine == "sglang":
        return [("/generate", {
            "input_ids": list(prompt_ids), "return_logprob": True, "logprob_start_len": -1,
            "token_ids_logprob": list(label_ids),
            "sampling_params": {"max_new_tokens": 1, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0}})]
    if engine == "llama.cpp":
        return [("/completion", {
            "prompt": list(prompt_ids), "n_predict": 1, "n_probs": 1, "post_sampling_probs": False,
            "temperature": 0.0, "logit_bias": [[label, FORCE_BIAS]], "cache_prompt": True}) for label in label_ids]
    if engine == "llama-cpp-python":
        return [("/v1/completions", {
            "model": model, "prompt": prompt_text, "max_tokens": 1, "temperature": 0.0, "logprobs": 0,
            "logit_bias": {str(label): FORCE_BIAS}}) for label in label_ids]
    raise ValueError(f"unknown server engine {engine!r}; known: {ENGINES}")


def parse_label_responses(engine: str, responses: list[dict], label_ids: tuple[int, ...],
                          label_pieces: tuple[str, ...] = ()) -> list[float]:
    """log P(label) for each label id, from the answers to label_requests (same order).

    label_pieces: each label token's text, which llama-cpp-python answers with instead of an id.
    Raises ServerProtocolError when an answer holds no log-probability or one for another token.
    """
    if engine == "sglang":
        values = _sglang_logprobs(_single(responses), label_ids)
    else:
        if len(responses) != len(label_ids):
            raise ServerProtocolError(f"expected {len(label_ids)} answers, one per label word, got {len(responses)}")
        reader = {"vllm": _vllm_forced, "llama.cpp": _llama_server_forced, "llama-cpp-python": _llama_cpp_python_forced}[engine]
        pieces = label_pieces or (None,) * len(label_ids)
        values = [reader(response, label, piece) for response, label, piece in zip(responses, label_ids, pieces)]
    check_normalized(values, label_ids)
    return values


def check_normalized(values: list[float], label_ids: tuple[int, ...]) -> None:
    """Log-probabilities over the whole vocabulary: finite, <= 0, and together at most probability 1."""
    for value, label in zip(values, label_ids):
        if not isinstance(value, (int, float)) or math.isnan(value) or value > NORMALIZATION_SLACK:
            raise ServerProtocolError(f"the server gave token {label} the log-probability {value!r}, not a number <= 0")
        if math.isinf(value):
            raise ServerProtocolError(f"the server gave token {label} log-probability -inf: it read a processed "
                                      "distribution (sampling constraints), not the model's")
    total = math.log(sum(math.exp(v) for v in values))
    if total > NORMALIZATION_SLACK:
        raise ServerProtocolError(
            f"the label words' probabilities add up to {math.exp(total):.3f} > 1: the server reports log-probabilities "
            "after its sampling constraints, not the model's (vLLM: start it with --logprobs-mode raw_logprobs)")


def _single(responses: list[dict]) -> dict:
    if len(responses) != 1:
        raise ServerProtocolError(f"expected one answer per query, got {len(responses)}")
    return responses[0]


def _choice_logprobs(response: dict) -> dict:
    choices = response.get("choices") or []
    logprobs = choices[0].get("logprobs") if choices else None
    if not logprobs or not logprobs.get("token_logprobs"):
        raise ServerProtocolError("the server returned no log-probabilities (the completion carries no 'logprobs'); "
                                  "it cannot score label words")
    return logprobs


def _vllm_forced(response: dict, label: int, _piece) -> float:
    logprobs = _choice_logprobs(response)
    token = (logprobs.get("tokens") or [None])[0]
    if token != f"token_id:{label}":
        raise ServerProtocolError(f"the server generated {token!r}, not the label token {label}: it ignored "
                                  "allowed_token_ids (a vLLM older than V1?)")
    return logprobs["token_logprobs"][0]


def _llama_cpp_python_forced(response: dict, label: int, piece: str | None) -> float:
    logprobs = _choice_logprobs(response)
    token = (logprobs.get("tokens") or [None])[0]
    if piece is not None and token != piece:
        raise ServerProtocolError(f"the server generated {token!r}, not the label token {piece!r} (id {label}): "
                                  "it ignored logit_bias")
    return logprobs["token_logprobs"][0]


def _llama_server_forced(response: dict, label: int, _piece) -> float:
    probabilities = response.get("completion_probabilities")
    if not probabilities:
        raise ServerProtocolError("the server returned no token probabilities (no 'completion_probabilities'); "
                                  "it cannot score label words")
    first = probabilities[0]
    if first.get("id") != label:
        raise ServerProtocolError(f"the server generated token {first.get('id')!r}, not the label token {label}: "
                                  "it ignored logit_bias")
    if "logprob" in first:
        return first["logprob"]
    if "prob" in first:  # llama-server with post-sampling probabilities reports probabilities
        return math.log(first["prob"]) if first["prob"] > 0 else -math.inf
    raise ServerProtocolError("the server's token probabilities carry neither 'logprob' nor 'prob'")


def _sglang_logprobs(response: dict, label_ids: tuple[int, ...]) -> list[float]:
    rows = (response.get("meta_info") or {}).get("output_token_ids_logprobs")
    if not rows or not rows[0]:
        raise ServerProtocolError("the server returned no token_ids_logprob values (no meta_info.output_token_ids_logprobs); "
                                  "it cannot score label words")
    found = {}
    for entry in rows[0]:  # [logprob, token_id, text or None]
        found[int(entry[1])] = entry[0]
    missing = [label for label in label_ids if label not in found]
    if missing:
        raise ServerProtocolError(f"label token ids {missing} are not among the log-probabilities the server returned "
                                  f"(it returned ids {sorted(found)})")
    return [found[label] for label in label_ids]


# ----- usage: how much of each prompt the server's prefix cache served -----

def usage_tokens(engine: str, response: dict) -> tuple[int | None, int | None]:
    """(prompt tokens, of them served from the prefix cache), each None where the server does not say."""
    if engine == "sglang":
        meta = response.get("meta_info") or {}
        return meta.get("prompt_tokens"), meta.get("cached_tokens")
    if engine == "llama.cpp":
        timings = response.get("timings") or {}
        prompt, cached = timings.get("prompt_n"), timings.get("cache_n")
        return (None if prompt is None else prompt + (cached or 0)), cached
    usage = response.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}  # vLLM with --enable-prompt-tokens-details
    return usage.get("prompt_tokens"), details.get("cached_tokens")


# ----- tokenization, model info -----

def tokenize_request(engine: str, model: str, text: str, add_special: bool) -> tuple[str, dict]:
    if engine in ("vllm", "sglang"):
        return "/tokenize", {"model": model, "prompt": text, "add_special_tokens": add_special}
    if engine == "llama.cpp":
        return "/tokenize", {"content": text, "add_special": add_special}
    if engine == "llama-cpp-python":  # always adds BOS where the model has one; the caller strips it
        return "/extras/tokenize", {"input": text, "model": model}
    raise ValueError(f"unknown server engine {engine!r}")


def parse_tokens(response: dict) -> list[int]:
    tokens = response.get("tokens")
    if not isinstance(tokens, list):
        raise ServerProtocolError("the server's tokenize answer holds no 'tokens' list")
    # llama-server answers {id, piece} objects when asked for pieces; plain ids otherwise
    return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]


def served_model(models_response: dict, wanted: str) -> dict:
    """The entry of /v1/models for `wanted`, or a one-line error listing what the server serves."""
    entries = models_response.get("data") or []
    for entry in entries:
        if entry.get("id") == wanted:
            return entry
    served = ", ".join(repr(e.get("id")) for e in entries) or "nothing"
    raise ServerProtocolError(f"the server does not serve a model named {wanted!r}; it serves {served}")
