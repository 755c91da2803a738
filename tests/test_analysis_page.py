"""The analysis report in a real headless Chromium (Debian's, driven by Playwright), opened from disk with the
network blocked: every plot loads, the maps have a dot per record with its text on hover, the colour switch and
the errors-only filter work, the hardest examples carry heat maps, and the page raises no errors.

Set ``TUNELAB_REPORT_SCREENSHOT=path.png`` to keep the screenshot (the README's comes from a real run; see there).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tunelab

from conftest import sentiment_rows, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("report")
    artifact = tunelab.fit(tiny_config(tiny_bert, root / "run", epochs=1, learning_rate=1e-4),  # half learned: errors
                           train=sentiment_rows(64), validation=sentiment_rows(16, seed=5)).artifact_dir
    rows = sentiment_rows(40, seed=21)
    result = tunelab.analyze(artifact, rows, out=root / "analysis", hardest=5)
    return Path(result["files"]["report"]), result


def test_the_report_opens_offline_with_its_plots_maps_and_heat_maps(browser, report, tmp_path: Path) -> None:
    path, result = report
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    context.route("**/*", lambda route: (requests.append(route.request.url), route.abort())
                  if not route.request.url.startswith(("file:", "data:")) else route.continue_())
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    assert requests == [] and errors == []
    images = page.locator("img")
    assert images.count() == len([k for k in result["files"] if k not in ("report", "json") and not k.startswith("map_")])
    for k in range(images.count()):
        assert images.nth(k).evaluate("img => img.complete && img.naturalWidth > 100"), images.nth(k).get_attribute("alt")
    dots = page.locator("circle.dot")
    assert dots.count() == 40 * len(result["maps"])
    first_title = dots.first.locator("title").text_content()
    assert any(e["text"] in first_title for e in result["examples"]) and "gold:" in first_title
    wrong = page.locator("circle.wrong")
    assert wrong.count() == sum(e["correct"] is False for e in result["examples"]) * len(result["maps"])
    assert wrong.count() > 0
    before = wrong.first.get_attribute("fill")  # the switch recolours a wrong dot from its gold to its predicted group
    page.select_option("#colour", "pred")
    assert wrong.first.get_attribute("fill") == wrong.first.get_attribute("data-pred") != before
    page.check("#only-wrong")
    assert page.locator("circle.dot:not(.wrong)").first.is_hidden() and wrong.first.is_visible()
    assert page.locator("#hardest .w").count() > 0  # explained words of the hardest examples
    assert page.locator("#calibration").is_visible() and page.locator("#slices").is_visible()
    page.screenshot(path=os.environ.get("TUNELAB_REPORT_SCREENSHOT") or str(tmp_path / "report.png"), full_page=True)
    context.close()
