"""``tunelab serve``: the API over a tiny classifier — schemas, micro-batching, keys and scopes, limits, errors,
metrics, and the refusal to listen publicly without keys."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from pathlib import Path

import pytest

import tunelab
from tunelab.cli import main
from tunelab.serve import KeyStore, ServeSettings, new_key

from conftest import live_server, sentiment_rows, tiny_config

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'tunelab[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from tunelab.serve.app import create_app  # noqa: E402
from tunelab.serve.microbatch import MicroBatcher  # noqa: E402


@pytest.fixture(scope="module")
def classifier(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    return tunelab.fit(tiny_config(tiny_bert, out, epochs=1), train=sentiment_rows(32)).artifact_dir


@pytest.fixture(scope="module")
def keys() -> tuple[KeyStore, dict[str, str]]:
    tokens, lines = {}, []
    for role, scopes in (("all", ["*"]), ("other", ["other-model"]), ("admin", ["*", "admin"])):
        tokens[role], line = new_key(scopes)
        lines.append(line)
    return KeyStore.parse(lines), tokens


def client(classifier: Path, keys: KeyStore | None = None, **settings) -> TestClient:
    predictor = tunelab.Predictor.load(classifier)
    app = create_app(ServeSettings(**settings), {"sentiment": predictor}, keys or KeyStore([]))
    return TestClient(app, raise_server_exceptions=False)


@contextmanager
def slowed(api: TestClient, seconds: float):
    """The served model takes ``seconds`` longer per call while the block runs."""
    import time

    predictor = api.app.state.served["sentiment"].predictor
    original = predictor.predict

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    predictor.predict = slow
    try:
        yield
    finally:
        predictor.predict = original


def test_predict_models_schema_and_health(classifier: Path) -> None:
    with client(classifier) as api:
        assert api.get("/health").json() == {"status": "ok"}
        assert api.get("/ready").json() == {"status": "ready", "models": ["sentiment"]}
        card = api.get("/v1/models").json()["models"][0]
        assert card["name"] == "sentiment" and card["task"] == "classification" and sorted(card["labels"]) == ["neg", "pos"]
        assert card["runtime"] == "pytorch" and "text" in card["input_schema"]["properties"]
        one = api.post("/v1/models/sentiment/predict", json={"inputs": "the film was great"})
        assert one.status_code == 200 and one.headers["x-request-id"]
        direct = tunelab.Predictor.load(classifier).predict(["the film was great", "a dull meal"])
        many = api.post("/v1/models/sentiment/predict", json={"inputs": ["the film was great", {"text": "a dull meal"}]})
        assert [p["label"] for p in many.json()["predictions"]] == [p["label"] for p in direct]
        assert many.json()["predictions"][0]["scores"] == pytest.approx(direct[0]["scores"], abs=1e-5)
        spec = api.get("/openapi.json").json()
        assert "/v1/models/sentiment/predict" in spec["paths"]  # each model documents its own schemas
        text = api.get("/metrics").text
        assert 'tunelab_requests_total{model="sentiment",status="200"} 2.0' in text and "tunelab_batch_size" in text


def test_bad_requests_get_json_errors_naming_the_field(classifier: Path) -> None:
    with client(classifier, max_inputs=3, max_chars=50, max_body_bytes=2000) as api:
        url = "/v1/models/sentiment/predict"
        cases = [
            (api.post(url, json={"inputs": ["a"] * 4}), 413, "inputs"),
            (api.post(url, json={"inputs": ["ok", "x" * 51]}), 413, "inputs[1]"),
            (api.post(url, content=json.dumps({"inputs": "y" * 3000}), headers={"content-type": "application/json"}),
             413, "body"),
            (api.post(url, content=iter([b'{"inputs": "', b"z" * 2500, b'"}']),
                      headers={"content-type": "application/json"}), 413, None),  # chunked, no Content-Length
            (api.post(url, content="{not json", headers={"content-type": "application/json"}), 422, None),
            (api.post(url, json={"texts": ["a"]}), 422, "inputs"),
            (api.post(url, json={"inputs": [""]}), 422, "inputs[0]"),
            (api.post("/v1/models/nope/predict", json={"inputs": "a"}), 404, "name"),
            (api.post("/v1/models/..%2F..%2Fetc/predict", json={"inputs": "a"}), 404, None),
        ]
        for response, status, field in cases:
            body = response.json()
            assert response.status_code == status, body
            assert "error" in body and "Traceback" not in body["error"]
            if field:
                assert body.get("field") == field, body
        assert api.post(url, json={"inputs": "still serving"}).status_code == 200


def test_keys_scopes_and_rate_limits(classifier: Path, keys) -> None:
    store, tokens = keys
    with client(classifier, store, rate_per_minute=3) as api:
        url = "/v1/models/sentiment/predict"
        assert api.post(url, json={"inputs": "a"}).status_code == 401
        assert api.post(url, json={"inputs": "a"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert api.get("/v1/models").status_code == 401 and api.get("/metrics").status_code == 401
        assert api.get("/health").status_code == 200  # liveness needs no key
        other = {"Authorization": f"Bearer {tokens['other']}"}
        assert api.post(url, json={"inputs": "a"}, headers=other).status_code == 403
        assert api.get("/v1/models", headers=other).json()["models"] == []  # it sees only its scope
        good = {"Authorization": f"Bearer {tokens['all']}"}
        assert [api.post(url, json={"inputs": "a"}, headers=good).status_code for _ in range(3)] == [200, 200, 200]
        limited = api.post(url, json={"inputs": "a"}, headers=good)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        assert api.post(url, json={"inputs": "a"}, headers=admin).status_code == 200  # its own bucket


def test_a_failing_model_gives_500_with_a_request_id_and_the_server_keeps_serving(classifier: Path) -> None:
    with client(classifier) as api:
        served = api.app.state.served["sentiment"]
        original = served.predictor.predict
        served.predictor.predict = lambda *a, **k: 1 / 0
        broken = api.post("/v1/models/sentiment/predict", json={"inputs": "a"})
        assert broken.status_code == 500 and broken.json()["request_id"] in broken.json()["error"]
        served.predictor.predict = original
        assert api.post("/v1/models/sentiment/predict", json={"inputs": "a"}).status_code == 200


def test_micro_batching_groups_concurrent_requests() -> None:
    calls: list[int] = []

    def run(items: list[str]) -> list[int]:
        calls.append(len(items))
        return [len(i) for i in items]

    async def scenario() -> list[list[int]]:
        batcher = MicroBatcher(run, max_batch_size=8, max_wait_ms=50)
        try:
            return await asyncio.gather(*(batcher.submit(["x" * n, "y"]) for n in range(1, 6)))
        finally:
            batcher.close()

    results = asyncio.run(scenario())
    assert results == [[n, 1] for n in range(1, 6)]  # each request gets its own slice, in order
    assert sum(calls) == 10 and len(calls) == 2 and max(calls) <= 8  # 4 requests share a call, the 5th leads the next


def test_no_public_server_without_keys_and_key_files_are_checked(classifier: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(tunelab.ConfigError, match="refusing to serve on 0.0.0.0 without API keys"):
        create_app(ServeSettings(host="0.0.0.0"), {}, KeyStore([]))
    assert ServeSettings().host == "127.0.0.1" and ServeSettings(host="::1").loopback
    with pytest.raises(ValueError, match="no '/'"):
        ServeSettings(models={"../etc": classifier})
    bad = tmp_path / "keys.txt"
    bad.write_text("sha256:1234 sentiment\n")
    with pytest.raises(tunelab.ConfigError, match="keys.txt line 1: the sha256 digest must be 64 hex"):
        KeyStore.load(bad, None)
    assert main(["serve", "--new-key", "--scopes", "sentiment"]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    token, line = printed[1], printed[3]
    assert KeyStore.parse([line]).check(token).allows("sentiment")
    assert KeyStore.load(None, f"{token}, other").check("other") is not None
    assert main(["serve", str(classifier), "--host", "0.0.0.0"]) == 2
    assert "without API keys" in capsys.readouterr().err


@pytest.mark.slow
def test_generation_streams_and_speaks_openai(tiny_llama: Path, tmp_path: Path) -> None:
    artifact = tunelab.fit({"task": "summarization", "model": str(tiny_llama), "strategy": "zero_shot",
                            "output_dir": str(tmp_path / "zs"), "generate": {"max_new_tokens": 12, "strategy": "sample", "temperature": 1.0, "top_p": 1.0, "seed": 7},
                            "prompt": {"template": "{text}"}}).artifact_dir
    predictor = tunelab.Predictor.load(artifact)
    expected = predictor.predict("the cat ate the rice and the dog ate the corn")["text"]
    assert expected.strip()  # seeded sampling: a random tiny model's greedy choice is only newlines
    app = create_app(ServeSettings(), {"writer": predictor}, KeyStore([]))
    with TestClient(app, raise_server_exceptions=False) as api:
        text = "the cat ate the rice and the dog ate the corn"
        whole = api.post("/v1/models/writer/generate", json={"input": text})
        assert whole.status_code == 200 and whole.json()["text"] == expected
        with api.stream("POST", "/v1/models/writer/generate", json={"input": text, "stream": True}) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            data = [line[6:] for line in events.iter_lines() if line.startswith("data: ")]
        assert data[-1] == "[DONE]" and len(data) > 2  # several pieces, then the end
        assert "".join(json.loads(d)["text"] for d in data[:-1]).strip() == expected
        chat = api.post("/v1/chat/completions", json={"model": "writer", "messages": [{"role": "user", "content": text}]})
        body = chat.json()
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == expected
        with api.stream("POST", "/v1/chat/completions", json={"model": "writer", "stream": True,
                                                              "messages": [{"role": "user", "content": text}]}) as events:
            chunks = [line[6:] for line in events.iter_lines() if line.startswith("data: ")]
        deltas = [json.loads(c)["choices"][0]["delta"].get("content", "") for c in chunks[:-1]]
        assert chunks[-1] == "[DONE]" and "".join(deltas).strip() == expected
        assert json.loads(chunks[-2])["choices"][0]["finish_reason"] == "stop"
        assert api.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "a"}]}
                        ).status_code == 404
        assert api.post("/v1/models/writer/generate", json={"input": ""}).status_code == 422
        assert "tunelab_generated_pieces_total" in api.get("/metrics").text
        # the OpenAI client itself, over the same app
        from openai import OpenAI

        client = OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=api)
        reply = client.chat.completions.create(model="writer", messages=[{"role": "user", "content": text}])
        assert reply.choices[0].message.content == expected
        pieces = client.chat.completions.create(model="writer", messages=[{"role": "user", "content": text}],
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in pieces).strip() == expected
        # per-request decoding, OpenAI's names: max_tokens, temperature (0: greedy), seed; batched requests keep
        # the artifact's settings
        with predictor.decoding(max_new_tokens=3):
            short = predictor.predict(text)["text"]
        with predictor.decoding(strategy="greedy"):
            greedy = predictor.predict(text)["text"]
        assert short != expected and greedy != expected
        reply = client.chat.completions.create(model="writer", messages=[{"role": "user", "content": text}], max_tokens=3)
        assert reply.choices[0].message.content == short
        streamed = client.chat.completions.create(model="writer", messages=[{"role": "user", "content": text}],
                                                  max_tokens=3, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed).strip() == short.strip()
        assert api.post("/v1/models/writer/generate", json={"input": text, "temperature": 0}).json()["text"] == greedy
        bad = api.post("/v1/models/writer/generate", json={"input": text, "max_tokens": 0})
        assert bad.status_code == 422 and bad.json()["field"] == "max_tokens"
        assert api.post("/v1/models/writer/generate", json={"input": text}).json()["text"] == expected  # unchanged


@pytest.mark.slow
def test_the_command_serves_on_loopback_and_stops_cleanly(classifier: Path, tmp_path: Path) -> None:
    import httpx

    token, line = new_key(["sentiment"])
    (tmp_path / "keys.txt").write_text(line + "\n")
    with live_server([f"sentiment={classifier}", "--keys-file", str(tmp_path / "keys.txt")]) as (url, server):
        headers = {"Authorization": f"Bearer {token}"}
        reply = httpx.post(f"{url}/v1/models/sentiment/predict", json={"inputs": ["the film was great"] * 3},
                           headers=headers, timeout=30)
        assert reply.status_code == 200 and len(reply.json()["predictions"]) == 3
        assert httpx.post(f"{url}/v1/models/sentiment/predict", json={"inputs": "a"}, timeout=30).status_code == 401
    # uvicorn finishes, then re-raises the signal it caught (exit by SIGTERM, the convention for a stopped server)
    assert server.returncode in (0, -15) and "Application shutdown complete" in server.output, server.output
    assert "127.0.0.1" in server.output and "the film was great" not in server.output  # no request text in the log


def test_admin_loads_and_unloads_models_at_run_time(classifier: Path, keys) -> None:
    store, tokens = keys
    with client(classifier, store) as api:
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        user = {"Authorization": f"Bearer {tokens['all']}"}
        body = {"name": "second", "artifact": str(classifier)}
        assert api.post("/v1/admin/models", json=body, headers=user).status_code == 403
        assert api.post("/v1/admin/models", json={**body, "name": "../x"}, headers=admin).status_code == 422
        assert api.post("/v1/admin/models", json={**body, "artifact": "/no/such"}, headers=admin).status_code == 422
        loaded = api.post("/v1/admin/models", json=body, headers=admin)
        assert loaded.status_code == 201 and loaded.json() == {"loaded": "second", "task": "classification"}
        assert api.post("/v1/admin/models", json=body, headers=admin).status_code == 409
        assert api.post("/v1/models/second/predict", json={"inputs": "a"}, headers=user).status_code == 200
        assert "/v1/models/second/predict" in api.get("/openapi.json").json()["paths"]
        assert api.delete("/v1/admin/models/second", headers=admin).json() == {"unloaded": "second"}
        gone = api.post("/v1/models/second/predict", json={"inputs": "a"}, headers=user)
        assert gone.status_code == 404 and gone.json()["field"] == "name"
        assert api.delete("/v1/admin/models/second", headers=admin).status_code == 404
        assert api.post("/v1/models/sentiment/predict", json={"inputs": "a"}, headers=user).status_code == 200
    with client(classifier) as open_api:  # no keys: no admin at all
        assert open_api.post("/v1/admin/models", json={"name": "x", "artifact": str(classifier)}).status_code == 403


def test_a_slow_model_times_out_with_504_and_the_next_request_is_served(classifier: Path) -> None:
    import time

    with client(classifier, timeout_s=0.2) as api:
        with slowed(api, 0.6):
            late = api.post("/v1/models/sentiment/predict", json={"inputs": "a"})
        assert late.status_code == 504 and "0.2 s" in late.json()["error"]
        time.sleep(0.5)  # the slow call finishes in its thread; the batcher is free again
        assert api.post("/v1/models/sentiment/predict", json={"inputs": "a"}).status_code == 200


def test_serve_settings_mistakes_are_named(tmp_path: Path, capsys) -> None:
    assert main(["serve", "m=/no/such/artifact"]) == 2
    assert "model 'm'" in capsys.readouterr().err
    config = tmp_path / "serve.yaml"
    config.write_text("models: {}\nmax_batch: 8\n")
    assert main(["serve", "x=/no/such", "--config", str(config)]) == 2
    assert "serve settings: max_batch: Extra inputs are not permitted" in capsys.readouterr().err
    config.write_text("models: [unclosed\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "name at least one artifact" in capsys.readouterr().err


def test_draining_finishes_requests_in_flight_and_turns_new_ones_away(classifier: Path) -> None:
    import threading
    import time

    with client(classifier) as api, slowed(api, 1.0):
        replies: list = []
        in_flight = threading.Thread(target=lambda: replies.append(
            api.post("/v1/models/sentiment/predict", json={"inputs": "the film was great"})))
        in_flight.start()
        time.sleep(0.3)
        api.app.state.drain()  # what SIGTERM does (tunelab.serve's uvicorn server calls it)
        turned = api.post("/v1/models/sentiment/predict", json={"inputs": "a"})
        assert turned.status_code == 503 and "shutting down" in turned.json()["error"]
        assert api.get("/ready").status_code == 503  # load balancers stop sending traffic
        in_flight.join()
        assert replies[0].status_code == 200 and replies[0].json()["predictions"][0]["label"] in {"neg", "pos"}


def test_sigterm_drains_before_stopping() -> None:
    import signal

    import uvicorn

    from tunelab.serve import draining_server

    calls: list[str] = []

    class App:
        class state:
            drain = staticmethod(lambda: calls.append("drain"))

    server = draining_server(App, uvicorn.Config(App))
    server.handle_exit(signal.SIGTERM, None)
    assert calls == ["drain"] and server.should_exit


def test_explain_endpoint_gives_word_attributions_and_named_errors(classifier: Path) -> None:
    with client(classifier) as api:
        reply = api.post("/v1/models/sentiment/explain", json={"input": "the film was great", "method": "occlusion"})
        body = reply.json()["explanation"]
        assert reply.status_code == 200 and [w["word"] for w in body["words"]] == ["the", "film", "was", "great"]
        direct = tunelab.Predictor.load(classifier).explain("the film was great", method="occlusion")
        assert [w["attribution"] for w in body["words"]] == pytest.approx([w["attribution"] for w in direct["words"]],
                                                                         abs=1e-5)
        bad = api.post("/v1/models/sentiment/explain", json={"input": "fine", "method": "occlusion", "target": "maybe"})
        assert bad.status_code == 422 and bad.json()["field"] == "input" and "not a label" in bad.json()["error"]
        unknown = api.post("/v1/models/sentiment/explain", json={"input": "fine", "method": "shap"})
        assert unknown.status_code == 422 and "unknown explainer" in unknown.json()["error"]
        assert "/v1/models/sentiment/explain" in api.get("/openapi.json").json()["paths"]
        long = api.post("/v1/models/sentiment/explain", json={"input": "x" * 20_001, "method": "occlusion"})
        assert long.status_code == 413 and long.json()["field"] == "input"
        missing = api.post("/v1/models/sentiment/explain", json={"input": {"review": "fine"}, "method": "occlusion"})
        assert missing.status_code == 422 and "column 'text' is missing" in missing.json()["error"]
