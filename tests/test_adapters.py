"""Many adapters, one base: LoRA artifacts on the same base model share one copy of it (BasePool), predict
exactly as when loaded alone, take turns safely from several threads, and are released one by one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tunelab
from tunelab.adapters import BasePool

from conftest import sentiment_rows, tiny_config

TEXTS = ["the film was great", "a dull meal", "the phone was lovely", "the hotel was awful"]


def lora_classifier(tiny_bert: Path, out: Path, seed: int, labels: int = 2) -> Path:
    rows = sentiment_rows(32, seed=seed)
    if labels == 3:
        rows = [dict(r, label="mixed") if i % 3 == 0 else r for i, r in enumerate(rows)]
    config = {**tiny_config(tiny_bert, out, epochs=1, seed=seed, learning_rate=5e-3), "method": {"name": "lora", "r": 4}}
    return tunelab.fit(config, train=rows).artifact_dir


def same(got: list[dict], want: list[dict]) -> bool:
    return [g["label"] for g in got] == [w["label"] for w in want] and all(
        g["scores"] == pytest.approx(w["scores"], abs=1e-5) for g, w in zip(got, want))


@pytest.fixture(scope="module")
def adapters(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [lora_classifier(tiny_bert, root / f"a{i}", seed=i) for i in range(3)] + [
        lora_classifier(tiny_bert, root / "three", seed=9, labels=3)]


@pytest.mark.slow
def test_adapters_share_one_base_and_predict_as_alone(adapters: list[Path]) -> None:
    alone = [tunelab.Predictor.load(path).predict(TEXTS) for path in adapters]
    pool = BasePool()
    shared = [tunelab.Predictor.load(path, pool=pool) for path in adapters]
    assert shared[0].model is shared[1].model is shared[2].model  # one copy of the base for the three
    assert shared[3].model is not shared[0].model  # a different head shape (3 labels) gets its own base
    assert len(pool.bases) == 2
    assert {id(p) for p in shared[0].model.parameters()} >= {id(p) for p in shared[1].model.parameters()}
    # interleaved from threads, every prediction is its own adapter's (the base is taken in turns)
    with ThreadPoolExecutor(4) as workers:
        results = list(workers.map(lambda i: shared[i % 4].predict(TEXTS), range(16)))
    assert all(same(result, alone[i % 4]) for i, result in enumerate(results))
    assert not same(alone[0], alone[1]) and not same(alone[1], alone[2])  # a mix-up would be seen
    pool.release(shared[0].adapter)
    assert same(shared[1].predict(TEXTS), alone[1]) and same(shared[2].predict(TEXTS), alone[2])
    assert shared[0].adapter.name not in shared[1].model.peft_config
    pool.release(shared[1].adapter)
    pool.release(shared[2].adapter)
    assert len(pool.bases) == 1  # the base went with its last adapter


@pytest.mark.slow
def test_the_server_shares_bases_and_unloads_one_adapter_at_a_time(adapters: list[Path]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tunelab.serve import KeyStore, ServeSettings, new_key
    from tunelab.serve.app import create_app

    token, line = new_key(["*", "admin"])
    settings = ServeSettings(models={"a": adapters[0], "b": adapters[1]})
    with TestClient(create_app(settings, keys=KeyStore.parse([line]))) as api:
        auth = {"Authorization": f"Bearer {token}"}
        cards = {m["name"]: m for m in api.get("/v1/models", headers=auth).json()["models"]}
        assert cards["a"]["shares_base"] and cards["b"]["shares_base"]
        served = api.app.state.served
        assert served["a"].predictor.model is served["b"].predictor.model
        loaded = api.post("/v1/admin/models", json={"name": "c", "artifact": str(adapters[2])}, headers=auth)
        assert loaded.status_code == 201 and served["c"].predictor.model is served["a"].predictor.model
        want = {name: tunelab.Predictor.load(adapters[i]).predict(TEXTS) for i, name in enumerate("abc")}
        for name in "abc":
            got = api.post(f"/v1/models/{name}/predict", json={"inputs": TEXTS}, headers=auth).json()["predictions"]
            assert same(got, want[name])
        assert api.delete("/v1/admin/models/a", headers=auth).status_code == 200
        got = api.post("/v1/models/c/predict", json={"inputs": TEXTS}, headers=auth).json()["predictions"]
        assert same(got, want["c"])


def test_a_tampered_adapter_is_refused_before_it_joins_a_shared_base(adapters: list[Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(adapters[1], copy)
    weights = next((copy / "model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    pool = BasePool()
    first = tunelab.Predictor.load(adapters[0], pool=pool)
    with pytest.raises(tunelab.ArtifactError, match="sha256"):
        tunelab.Predictor.load(copy, pool=pool)
    assert list(first.model.peft_config) == [first.adapter.name]  # nothing of it was loaded onto the base
    assert same(first.predict(TEXTS), tunelab.Predictor.load(adapters[0]).predict(TEXTS))

