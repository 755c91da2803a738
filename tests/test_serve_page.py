"""The web page of ``tunelab serve`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a live server on tiny models: the key, label bars, entity highlights, the QA answer in its context, the
relation between two marked spans, streaming text, the model card, a phone-width layout and labelled controls.

``make test`` installs Chromium when it is absent; without it (or without Playwright) these tests skip and say
why. Set ``TUNELAB_SCREENSHOT=path.png`` to keep the page's screenshot (the README's comes from here).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

import tunelab
from tunelab.serve import new_key

from conftest import coloured_records, live_server, sentiment_rows, tiny_config, toy_qa, toy_relations, toy_sentences

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_bert: Path, tiny_llama: Path, tiny_vit: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("page")
    shop_config = {**tiny_config(tiny_bert, root / "shop", epochs=3), "data": {"max_length": 16, "image_column": "image"},
                   "task": {"name": "classification", "fusion": "concat", "image_model": str(tiny_vit)}}
    shop = tunelab.fit(shop_config, train=str(coloured_records(root / "coloured"))).artifact_dir
    sentiment = tunelab.fit(tiny_config(tiny_bert, root / "sentiment", epochs=6, learning_rate=3e-3),
                           train=sentiment_rows(96)).artifact_dir
    ner_config = {**tiny_config(tiny_bert, root / "ner", epochs=8, learning_rate=3e-3), "task": "ner"}
    ner = tunelab.fit(ner_config, train=toy_sentences(120), validation=toy_sentences(30, seed=9)).artifact_dir
    writer = tunelab.fit({"task": "summarization", "model": str(tiny_llama), "strategy": "zero_shot",
                          "output_dir": str(root / "writer"), "generate": {"max_new_tokens": 48, "strategy": "sample", "temperature": 1.0, "top_p": 1.0, "seed": 7},
                          "prompt": {"template": "{text}"}}).artifact_dir
    qa_config = {**tiny_config(tiny_bert, root / "qa", epochs=2), "task": "qa"}
    qa = tunelab.fit(qa_config, train=toy_qa(40)).artifact_dir
    relation_config = {**tiny_config(tiny_bert, root / "relation", epochs=2), "task": "relation"}
    relation = tunelab.fit(relation_config, train=toy_relations(40)).artifact_dir
    token, line = new_key(["*"])
    (root / "keys.txt").write_text(line + "\n")
    with live_server([f"sentiment={sentiment}", f"people={ner}", f"writer={writer}", f"qa={qa}", f"rel={relation}", f"shop={shop}",
                      "--keys-file", str(root / "keys.txt")]) as (url, _):
        yield url, token


@contextmanager
def tab(browser, url: str, *, keep_policy: bool):
    """A fresh tab on the page. With ``keep_policy`` the page's Content-Security-Policy holds, and Playwright's
    ``wait_for_function`` cannot run under it (it evaluates strings); other tabs bypass it for that reason."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=not keep_policy)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.goto(url)
    yield page
    context.close()
    assert not errors, errors  # no script error on the page, nothing its own policy had to block


@pytest.fixture()
def page(browser, server):
    with tab(browser, server[0], keep_policy=False) as page:
        yield page


@pytest.fixture()
def strict_page(browser, server):
    with tab(browser, server[0], keep_policy=True) as page:
        yield page


def enter_key(page, token: str) -> None:
    page.fill("#key", token)
    page.press("#key", "Enter")


def run_model(page, name: str, text: str) -> None:
    page.select_option("#model", name)
    page.wait_for_selector("#card-body dl")  # the model is chosen and its card shown
    page.fill("#fields textarea", text)
    page.click("#run")


def test_a_wrong_key_is_rejected_and_the_right_one_lists_the_models(page, server) -> None:
    url, token = server
    page.wait_for_selector("#status.error")
    assert "needs an API key" in page.inner_text("#status")
    enter_key(page, "not-a-key")
    page.wait_for_function("document.querySelector('#status').textContent.includes('rejected')")
    assert page.get_attribute("#key", "aria-invalid") == "true" and page.is_disabled("#run")
    enter_key(page, token)
    page.wait_for_function("document.querySelectorAll('#model option').length === 6")
    assert page.input_value("#key") == ""  # the field is cleared: the key lives in the tab's memory only
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0 and page.evaluate("document.cookie") == ""
    # every control has a label, and the page's own headers forbid other origins' scripts and framing
    unlabelled = page.evaluate("[...document.querySelectorAll('input, select, textarea')].filter(e => !e.labels.length)"
                               ".map(e => e.id)")
    assert unlabelled == []
    headers = page.request.get(url).headers
    assert "script-src 'self'" in headers["content-security-policy"] and "frame-ancestors 'none'" in headers[
        "content-security-policy"]


def test_classification_shows_label_bars_and_the_model_card_under_the_page_policy(strict_page, server,
                                                                                   tmp_path: Path) -> None:
    import httpx

    url, token = server
    page = strict_page  # the page's own Content-Security-Policy holds: everything below works under it
    enter_key(page, token)
    page.wait_for_selector("#model option", state="attached")
    run_model(page, "sentiment", "the film was great")
    page.wait_for_selector(".bars li.chosen")
    assert not page.is_visible("#mark-e1")  # the relation tools only show for a relation model
    expected = httpx.post(f"{url}/v1/models/sentiment/predict", json={"inputs": "the film was great"},
                          headers={"Authorization": f"Bearer {token}"}).json()["predictions"][0]
    assert page.inner_text(".bars li.chosen .name") == expected["label"]
    widths = page.eval_on_selector_all(".bars li", "items => items.map(li => [li.querySelector('.name').textContent,"
                                                   " parseFloat(li.querySelector('.fill').style.width)])")
    assert {name: round(width, 1) for name, width in widths} == {
        name: round(score * 100, 1) for name, score in expected["scores"].items()}
    card = page.inner_text("#card-body")
    assert "classification" in card and "validation metrics" in card
    page.wait_for_selector("#card-body figure img")
    page.wait_for_timeout(300)
    assert page.eval_on_selector("#card-body figure img", "img => img.complete && img.naturalWidth") > 100
    # keyboard: Ctrl+Enter in the text box runs the model again
    page.fill("#fields textarea", "a dull meal")
    page.press("#fields textarea", "Control+Enter")
    page.wait_for_selector("#status:text-is('Done.')")
    page.wait_for_selector(".bars li.chosen")
    # the explanation: a heat map over the words, by the method picked
    page.select_option("#method", "occlusion")
    page.click("#explain")
    page.wait_for_selector(".explanation .heat")
    assert page.eval_on_selector_all(".explanation .heat", "spans => spans.map(s => s.textContent)") == [
        "a", "dull", "meal"]
    assert "by occlusion" in page.inner_text(".explanation")
    shot = Path(os.environ.get("TUNELAB_SCREENSHOT") or tmp_path / "page.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_an_image_is_uploaded_from_the_page_and_sent_as_a_data_uri(page, server, tmp_path: Path) -> None:
    from PIL import Image

    enter_key(page, server[1])
    page.wait_for_selector("#model option", state="attached")
    page.select_option("#model", "shop")
    page.wait_for_selector("#card-body dl")
    assert page.get_attribute("#in-image", "type") == "file" and page.get_attribute("#in-image", "accept") == "image/*"
    page.fill("#in-text", "item number 12")
    page.click("#run")
    page.wait_for_selector("#status.error")
    assert "Choose a file for image" in page.inner_text("#status")
    for colour, label in (((220, 30, 30), "pos"), ((30, 30, 220), "neg")):
        photo = tmp_path / f"{label}.png"
        Image.new("RGB", (40, 40), colour).save(photo)
        page.set_input_files("#in-image", str(photo))
        page.wait_for_selector("#fields img.preview:not([hidden])")
        page.click("#run")
        page.wait_for_selector(f".bars li.chosen .name:text-is('{label}')")
    page.select_option("#method", "occlusion")  # the title's words explained, the image sent along
    page.click("#explain")
    page.wait_for_selector(".explanation .heat")
    assert page.eval_on_selector_all(".explanation .heat", "spans => spans.map(s => s.textContent)") == [
        "item", "number", "12"]
    page.wait_for_selector(".region-map .cells .cell")  # and the image's regions over the picture
    assert page.eval_on_selector_all(".region-map .cell", "cells => cells.length") == 49
    assert page.eval_on_selector(".region-map img", "img => img.complete && img.naturalWidth") == 40


def test_entities_are_highlighted_in_the_text_and_text_stays_text(page, server) -> None:
    enter_key(page, server[1])
    run_model(page, "people", "Carol lives in Lima .")
    page.wait_for_selector("mark.span")
    marks = page.eval_on_selector_all("mark.span", "ms => ms.map(m => [m.dataset.type, m.firstChild.textContent])")
    assert sorted(marks) == [["LOC", "Lima"], ["PER", "Carol"]]
    assert page.inner_text(".marked").replace(" PER", "").replace(" LOC", "") == "Carol lives in Lima ."
    # Explain: the first entity's heat map over the sentence's words (integrated gradients)
    page.select_option("#method", "ig")
    page.click("#explain")
    page.wait_for_selector(".explanation .heat")
    assert page.eval_on_selector_all(".explanation .heat", "spans => spans.map(s => s.textContent)") == [
        "Carol", "lives", "in", "Lima", "."]
    assert "Why PER@0:5" in page.inner_text(".explanation")
    # a text that looks like HTML is shown as text, never run
    run_model(page, "people", "<img src=x onerror=alert(1)> Erin lives in Oslo .")
    page.wait_for_function("document.querySelector('.marked') && document.querySelector('.marked').textContent.includes('<img')")
    assert page.eval_on_selector_all("#result img", "imgs => imgs.length") == 0


def api_prediction(server, model: str, inputs) -> dict:
    import httpx

    url, token = server
    reply = httpx.post(f"{url}/v1/models/{model}/predict", json={"inputs": inputs},
                       headers={"Authorization": f"Bearer {token}"}, timeout=60)
    return reply.json()["predictions"][0]


def test_the_answer_is_highlighted_in_its_context(page, server) -> None:
    enter_key(page, server[1])
    page.select_option("#model", "qa")
    page.wait_for_selector("#card-body dl")
    question, context = "what color was the goat ?", "the goat was purple ."
    page.fill("#in-question", question)
    page.fill("#in-context", context)
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'")
    expected = api_prediction(server, "qa", {"question": question, "context": context})
    if expected["start"] is None:
        assert "No answer" in page.inner_text("#result")
    else:
        assert page.eval_on_selector("mark.span", "m => [m.dataset.type, m.firstChild.textContent]") == [
            "answer", context[expected["start"]:expected["end"]]]
        assert expected["answer"] in page.inner_text("#result .answer")


def test_entities_marked_by_selection_show_the_relation_between_them(page, server) -> None:
    enter_key(page, server[1])
    page.select_option("#model", "rel")
    page.wait_for_selector("#card-body dl")
    assert page.is_visible("#mark-e1")
    page.fill("#fields textarea", "the fire caused the flood")
    page.eval_on_selector("#fields textarea", "box => box.setSelectionRange(4, 8)")  # "fire"
    page.click("#mark-e1")
    text = page.input_value("#fields textarea")
    start = text.index("flood")
    page.eval_on_selector("#fields textarea", f"box => box.setSelectionRange({start}, {start + 5})")
    page.click("#mark-e2")
    assert page.input_value("#fields textarea") == "the <e1>fire</e1> caused the <e2>flood</e2>"
    page.click("#run")
    page.wait_for_selector(".bars li.chosen")
    marks = page.eval_on_selector_all("mark.span", "ms => ms.map(m => [m.dataset.type, m.firstChild.textContent])")
    assert marks == [["e1", "fire"], ["e2", "flood"]]
    expected = api_prediction(server, "rel", "the <e1>fire</e1> caused the <e2>flood</e2>")
    assert page.inner_text(".bars li.chosen .name") == expected["label"]
    assert page.inner_text("#result .answer").startswith("fire → " + expected["label"] + " → flood")


def test_generated_text_streams_in_piece_by_piece(page, server) -> None:
    import httpx

    url, token = server
    enter_key(page, token)
    prompt = "the cat ate the rice and the dog ate the corn"
    expected = httpx.post(f"{url}/v1/models/writer/generate", json={"input": prompt},
                          headers={"Authorization": f"Bearer {token}"}, timeout=60).json()["text"]
    page.select_option("#model", "writer")
    page.wait_for_function("document.querySelector('#run').textContent === 'Generate'")
    page.fill("#fields textarea", prompt)
    # record what the output shows each time it changes, and whether the request was still running then
    page.evaluate("""() => { window.seen = []; new MutationObserver(() => {
        const out = document.querySelector('pre.generated');
        if (out) window.seen.push([out.textContent.length, document.querySelector('#status').textContent]);
      }).observe(document.querySelector('#result'), {childList: true, subtree: true, characterData: true}); }""")
    page.click("#run")
    page.wait_for_function("document.querySelector('#status').textContent === 'Done.'", timeout=60_000)
    assert expected.strip()  # seeded sampling: a random tiny model's greedy choice is only newlines
    assert page.inner_text("pre.generated").split() == expected.split()
    seen = page.evaluate("window.seen")
    partial = {length for length, status in seen if status.startswith("Generating") and 0 < length < len(expected)}
    assert len(partial) >= 3, seen  # the text grew several times before the answer was complete
    # readable on a phone: nothing wider than the screen
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
