"""The OpenAI-compatible server through the `openai` client on 127.0.0.1: completions and chat,
streaming and not, every answer equal to Engine.generate of that prompt alone (greedy) or with
the same seed (sampled), 32 concurrent clients, bad requests, a client killed mid-stream, the
queue limit, metrics. The server runs in-process (uvicorn and the scheduler in threads)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import socket
import time

import httpx
import numpy as np
import pytest

from lfm2engine.engine import Engine
from lfm2engine.parallel.comm import SelfComm
from lfm2engine.parallel.plan import ParallelPlan
from lfm2engine.serve.server import Server
from serve_util import SlowSteps, add_tokenizer, offline

import openai  # noqa: E402 - the test extra has it

NAME = "tiny"
CTX = 96


@pytest.fixture(scope="module")
def model_dir(hf_ckpt, tmp_path_factory):
    return add_tokenizer(hf_ckpt("moe_a"), str(tmp_path_factory.mktemp("tiny_tok")), 97)


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(engine, model_dir):
    with Server(engine, model_dir, max_batch=8, max_context=CTX, step_tokens=24, model_name=NAME,
                max_body_bytes=1 << 16) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def prompts(n, seed=0, lo=1, hi=40, vocab=97):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(3, vocab, int(rng.integers(lo, hi)))] for _ in range(n)]


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [NAME]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["slots"] == 8
    client.completions.create(model=NAME, prompt=[5, 6, 7], max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    for name in ("lfm2_generation_tokens_total", "lfm2_queue_depth", "lfm2_running_requests",
                 "lfm2_kv_cache_usage_ratio", "lfm2_time_to_first_token_seconds_count",
                 "lfm2_generation_tokens_per_second"):
        assert f"# TYPE {name.replace('_count', '')}" in text or name in text, name
    assert metric(text, "lfm2_generation_tokens_total") >= 1
    assert metric(text, "lfm2_time_to_first_token_seconds_count") >= 1


def test_completion_ids_and_text_equal_offline(client, engine, model_dir):
    from lfm2engine.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    p = [8, 9, 10, 11, 12, 13]
    ref = offline(engine, p, 12)
    r = client.completions.create(model=NAME, prompt=p, max_tokens=12, temperature=0)
    c = r.choices[0]
    assert c.token_ids == ref
    assert r.usage.prompt_tokens == len(p) and r.usage.completion_tokens == len(ref)
    assert r.usage.total_tokens == len(p) + len(ref)
    assert c.finish_reason == ("stop" if ref[-1] == 2 else "length")
    assert c.text == tok.decode([t for t in ref if t != 2])
    # the same prompt as text: BOS + encoded words (as lfm2engine.generate --prompt)
    text = "the cat sat on the mat"
    ids = tok.encode(text, add_bos=1)
    r = client.completions.create(model=NAME, prompt=text, max_tokens=8, temperature=0)
    assert r.choices[0].token_ids == offline(engine, ids, 8) and r.usage.prompt_tokens == len(ids)
    # streaming: the chunks concatenate to the same tokens and text, then a usage chunk
    chunks = list(client.completions.create(model=NAME, prompt=p, max_tokens=12, temperature=0, stream=True))
    got = [t for ch in chunks for c in ch.choices for t in c.token_ids]
    assert got == ref
    assert "".join(c.text for ch in chunks for c in ch.choices) == tok.decode([t for t in ref if t != 2])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref)


def test_chat_uses_the_template_as_transformers(client, engine, model_dir):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(model_dir)
    msgs = [{"role": "system", "content": "one two three"}, {"role": "user", "content": "hello world how are you"}]
    ids = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    assert ids[0] == 1 and 4 in ids  # BOS and <|im_start|> from the template
    ref = offline(engine, ids, 10)
    r = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=10, temperature=0)
    assert r.choices[0].token_ids == ref and r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=NAME, messages=msgs, max_tokens=10, temperature=0,
                                                 stream=True))
    assert [t for ch in chunks for c in ch.choices for t in (c.token_ids or [])] == ref
    assert "".join(c.delta.content or "" for ch in chunks for c in ch.choices) == r.choices[0].message.content
    assert chunks[-1].usage.total_tokens == len(ids) + len(ref)


def test_sampled_with_seed_equals_offline(client, engine):
    p = [20, 21, 22, 23]
    for seed in (3, 11):
        ref = offline(engine, p, 10, temperature=0.9, seed=seed, top_k=20, top_p=0.95)
        r = client.completions.create(model=NAME, prompt=p, max_tokens=10, temperature=0.9, seed=seed, top_p=0.95,
                                      extra_body={"top_k": 20})
        assert r.choices[0].token_ids == ref


def test_logprobs_and_stop(client, engine, model_dir):
    p = [30, 31, 32]
    r = client.completions.create(model=NAME, prompt=p, max_tokens=1, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    z = engine.logits([p])[0].astype(np.float64)
    ref = z - z.max() - np.log(np.exp(z - z.max()).sum())
    t = r.choices[0].token_ids[0]
    assert lp.token_logprobs[0] == pytest.approx(ref[t], abs=1e-6)
    assert sorted(lp.top_logprobs[0].values(), reverse=True) == pytest.approx(sorted(ref)[::-1][:3], abs=1e-6)
    c = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "a dog"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    assert len(c.choices[0].logprobs.content) == len(c.choices[0].token_ids)
    assert all(len(e.top_logprobs) == 2 for e in c.choices[0].logprobs.content)
    # stop strings: the text ends before the first stop string and the request stops there
    full = client.completions.create(model=NAME, prompt=p, max_tokens=20, temperature=0)
    words = full.choices[0].text.split()
    assert len(words) >= 3, full
    stop = " " + words[2]
    r = client.completions.create(model=NAME, prompt=p, max_tokens=20, temperature=0, stop=["zzz", stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full.choices[0].text[: full.choices[0].text.index(stop)]
    chunks = list(client.completions.create(model=NAME, prompt=p, max_tokens=20, temperature=0, stop=[stop],
                                            stream=True))
    assert "".join(c.text for ch in chunks for c in ch.choices) == r.choices[0].text


class FakeTok:
    """Each id is one character of `alphabet` (an id past it is an incomplete UTF-8 byte)."""

    alphabet = "abcdef"

    def decode(self, ids):
        return "".join(self.alphabet[i] if i < len(self.alphabet) else "\ufffd" for i in ids)

    def token_text(self, i):
        return self.decode([i])


def test_text_tracker_holds_back_stop_prefixes_and_partial_characters():
    from lfm2engine.serve.request import TextTracker

    t = TextTracker(FakeTok(), ["cde"])
    assert [t.push(i) for i in (0, 1, 2, 3)] == ["a", "b", "", ""]  # "c", "cd" may start the stop string
    assert not t.stopped
    assert t.push(4) == "" and t.stopped  # "cde" found: the text ends at "ab"
    t = TextTracker(FakeTok(), ["cx"])
    assert [t.push(i) for i in (2, 3)] == ["", "cd"]  # "c" held back until "cd" rules the stop string out
    assert t.push(9) == "" and t.push(None) == "\ufffd"  # a partial character waits, the end flushes it
    t = TextTracker(FakeTok(), ["ef", "bcd"])  # the longest possible stop prefix is held back
    assert [t.push(i) for i in (0, 1, 2, 4)] == ["a", "", "", "bc"]  # "e" may start "ef"
    t = TextTracker(None, [])
    assert t.push(17) == " 17" and t.token_text(17) == "token_id:17"


def test_32_concurrent_clients_equal_offline(client, engine):
    ps = prompts(32, seed=1)
    jobs = [(p, 4 + i % 9, 0.0 if i % 3 else 0.8, 100 + i) for i, p in enumerate(ps)]
    refs = [offline(engine, p, m, temperature=t, seed=s) for p, m, t, s in jobs]

    def one(i):
        p, m, t, s = jobs[i]
        if i % 2:
            ch = client.completions.create(model=NAME, prompt=p, max_tokens=m, temperature=t, seed=s, stream=True)
            return [tok for c in ch for x in c.choices for tok in x.token_ids]
        return client.completions.create(model=NAME, prompt=p, max_tokens=m, temperature=t, seed=s).choices[0].token_ids

    with cf.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(one, range(32)))
    for i, (g, r) in enumerate(zip(got, refs)):
        assert g == r, f"request {i}"


def post(server, body, raw=False):
    data = body if raw else json.dumps(body).encode()
    return httpx.post(server.url + "/v1/completions", content=data, headers={"content-type": "application/json"},
                      timeout=30)


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"model": "tiny", "prompt": [1, 2], "temperature": NaN}', 400, "temperature"),
    (b'{"model": "tiny", "prompt": [1, 2], "top_p": Infinity}', 400, "top_p"),
    ({"model": NAME, "prompt": [10 ** 30]}, 400, "prompt"),
    ({"model": NAME, "prompt": [1, 2], "frobnicate": 1}, 400, "frobnicate"),
    ({"model": NAME, "prompt": [1, 2], "max_tokens": -3}, 400, "max_tokens"),
    ({"model": NAME, "prompt": [1, 2], "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": NAME, "prompt": [1, 2], "temperature": -1}, 400, "temperature"),
    ({"model": NAME, "prompt": [1, 2], "n": 2}, 400, "n"),
    ({"model": NAME, "prompt": [1, 2], "seed": -1}, 400, "seed"),
    ({"model": NAME, "prompt": [1, 2], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": NAME, "prompt": [[1, 2], [3]]}, 400, "prompt"),
    ({"model": NAME, "prompt": [5, 97]}, 400, "prompt"),
    ({"model": NAME, "prompt": [5, -1]}, 400, "prompt"),
    ({"model": NAME, "prompt": [1.5, 2]}, 400, None),
    ({"model": NAME, "prompt": []}, 400, "prompt"),
    ({"model": NAME, "prompt": [7] * CTX}, 400, "prompt"),
    ({"model": NAME, "prompt": [7] * 10, "max_tokens": CTX}, 400, "max_tokens"),
    ({"model": "gpt-4", "prompt": [1, 2]}, 404, "model"),
    ({"prompt": [1, 2]}, 400, "model"),
    ({"model": NAME, "prompt": [1] * 40000}, 413, None),
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    r = post(server, body, raw=isinstance(body, bytes))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    assert post(server, {"model": NAME, "prompt": [1, 2], "max_tokens": 2}).status_code == 200  # still serving


def test_bad_chat_and_unknown_path(server, client):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": NAME, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": NAME, "messages": [{"role": "robot"}]})
    assert r.status_code == 400
    assert httpx.get(server.url + "/v2/nothing").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def wait_until(cond, timeout=20.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def slow_server(engine, model_dir):
    ex = SlowSteps(engine, SelfComm(), ParallelPlan("dp", 1, 0), 2, CTX, delay=0.03)
    with Server(engine, model_dir, ex, max_queue=1, model_name=NAME) as srv:
        yield srv


@pytest.mark.parametrize("stream", [True, False])
def test_client_killed_mid_request_frees_its_slot(slow_server, stream):
    srv = slow_server
    body = json.dumps({"model": NAME, "prompt": [5, 6], "max_tokens": 80, "temperature": 0, "stream": stream})
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    if stream:
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(4096)
            assert chunk, got  # the server must not close the stream early
            got += chunk
    else:
        assert wait_until(lambda: srv.metrics.generation_tokens >= 3)
    assert srv.scheduler.load()["running"] == 1
    s.close()  # the client dies mid-request
    assert wait_until(lambda: srv.scheduler.load()["running"] == 0), "the slot was not freed"
    text = httpx.get(srv.url + "/metrics").text
    assert metric(text, 'lfm2_requests_total{status="cancelled"}') == 1
    assert metric(text, "lfm2_generation_tokens_total") < 80
    # the freed slots serve new requests
    r = httpx.post(srv.url + "/v1/completions", json={"model": NAME, "prompt": [5, 6], "max_tokens": 3}, timeout=30)
    assert r.status_code == 200


def test_queue_limit_answers_429(slow_server):
    srv = slow_server
    body = {"model": NAME, "prompt": [9, 9], "max_tokens": 60, "temperature": 0}  # ~2 s: the 6 arrive meanwhile
    with cf.ThreadPoolExecutor(6) as pool:
        futs = [pool.submit(httpx.post, srv.url + "/v1/completions", json=body, timeout=60) for _ in range(6)]
        rs = [f.result() for f in futs]
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 3 and 429 in codes, codes  # 2 slots + 1 queued run; the rest are refused
    r429 = next(r for r in rs if r.status_code == 429)
    assert r429.json()["error"]["code"] == "queue_full"
    assert len({json.dumps(r.json()["choices"][0]["token_ids"]) for r in rs if r.status_code == 200}) == 1


def test_bounded_load(server, engine):
    """120 requests from 24 concurrent async clients on loopback: all answered, none lost, each
    equal to the offline tokens, and the server idle afterwards."""
    import asyncio

    ps = prompts(120, seed=7, hi=20)
    refs = {i: offline(engine, p, 3 + i % 5) for i, p in enumerate(ps)}

    async def run():
        sem = asyncio.Semaphore(24)
        async with httpx.AsyncClient(timeout=60) as c:
            async def one(i):
                async with sem:
                    r = await c.post(server.url + "/v1/completions",
                                     json={"model": NAME, "prompt": ps[i], "max_tokens": 3 + i % 5, "temperature": 0})
                    return r.status_code, r.json()["choices"][0]["token_ids"]
            return await asyncio.gather(*(one(i) for i in range(len(ps))))

    res = asyncio.run(run())
    assert [s for s, _ in res] == [200] * len(ps)
    assert all(toks == refs[i] for i, (_, toks) in enumerate(res))
    assert wait_until(lambda: server.scheduler.load()["running"] == 0)


def test_session_release_empties_one_slot(engine):
    """A released slot starts a new sequence from scratch (no conv state or length left over),
    and the other slots keep theirs: the same bits as fresh sessions."""
    from lfm2engine.errors import InputError

    a, b = [10, 11, 12, 13, 14], [40, 41, 42]
    for rollback in (0, 3):
        s = engine.session(2, 32, rollback=rollback)
        s.forward([0, 1], [a, [7, 8, 9]])
        s.release(1)
        assert s.lengths[1] == 0 and s.lengths[0] == len(a)
        got = s.forward([1, 0], [b, [15]])
        ref_b = engine.session(1, 32).forward([0], [b])[0]
        ref_a = engine.session(1, 32).forward([0], [a + [15]])[0]
        np.testing.assert_array_equal(got[0], ref_b)
        np.testing.assert_array_equal(got[1], ref_a)
    with pytest.raises(InputError):
        s.release(2)


def test_chat_template_is_sandboxed_and_reads_named_templates(tmp_path):
    from lfm2engine.errors import InputError
    from lfm2engine.serve.chat import ChatTemplate

    t = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InputError, match="rejected"):
        t.render([{"role": "user", "content": "x"}])
    t = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
                     "{{ messages | tojson }}")
    with pytest.raises(InputError, match="user first"):
        t.render([{"role": "system", "content": "x"}])
    assert t.render([{"role": "user", "content": "é"}]) == '[{"role": "user", "content": "é"}]'
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>"}, "chat_template": [{"name": "tool_use", "template": "T"},
                                                            {"name": "default", "template": "{{ bos_token }}D"}]}))
    assert ChatTemplate.from_model_dir(str(tmp_path)).render([]) == "<s>D"
    assert ChatTemplate.from_model_dir(str(tmp_path / "nowhere")) is None


def test_engine_failure_answers_503_and_health_says_so(engine, model_dir):
    from lfm2engine.errors import BackendError
    from lfm2engine.serve.steps import StepExecutor

    class Broken(StepExecutor):
        def step(self, seqs, tokens, released=()):
            raise BackendError("the device went away")

    with Server(engine, model_dir, Broken(engine, SelfComm(), ParallelPlan("dp", 1, 0), 2, CTX), model_name=NAME) as srv:
        r = httpx.post(srv.url + "/v1/completions", json={"model": NAME, "prompt": [3, 4], "max_tokens": 2}, timeout=30)
        assert r.status_code == 503 and "the device went away" in r.json()["error"]["message"]
        h = httpx.get(srv.url + "/health")
        assert h.status_code == 503 and h.json()["error"]["type"] == "server_error"
        r = httpx.post(srv.url + "/v1/completions", json={"model": NAME, "prompt": [3, 4], "max_tokens": 2}, timeout=30)
        assert r.status_code == 503


def test_scheduler_chunks_a_long_prompt_beside_running_decodes(engine):
    """With a step budget of 8 tokens, a 50-token prompt arriving while another request decodes
    is fed in chunks of at most 7, and the running request gets a token in every one of those
    steps; both answers equal Engine.generate of each prompt alone."""
    from lfm2engine.sampling import Sampler
    from lfm2engine.serve.request import GenRequest, TextTracker
    from lfm2engine.serve.scheduler import Scheduler
    from lfm2engine.serve.steps import StepExecutor

    steps = []

    class Recording(StepExecutor):
        def step(self, seqs, tokens, released=()):
            steps.append({int(s): len(t) for s, t in zip(seqs, tokens)})
            return super().step(seqs, tokens, released)

    sch = Scheduler(Recording(engine, SelfComm(), ParallelPlan("dp", 1, 0), 2, CTX), step_tokens=8, min_chunk=4)
    out = {"a": [], "b": []}

    def request(name, prompt, n):
        return GenRequest(prompt, n, Sampler(0.0, 0, 1.0, 0, [0]), frozenset(), TextTracker(None, []),
                          emit=lambda ev: out[name].extend(ev.token_ids))

    a = request("a", [5, 6], 30)
    sch.submit(a)
    sch.step()
    sch.step()
    b = request("b", list(range(3, 53)), 3)
    sch.submit(b)
    first = len(steps)
    while b.prefilling:
        sch.step()
    during = steps[first:]
    assert len(during) == 8  # ceil(50 / 7)
    assert all(st[a.slot] == 1 and 1 <= st[b.slot] <= 7 for st in during)
    while a.finish_reason is None or b.finish_reason is None:
        sch.step()
    assert out["a"] == engine.generate([[5, 6]], 30)[0]
    assert out["b"] == engine.generate([list(range(3, 53))], 3)[0]
