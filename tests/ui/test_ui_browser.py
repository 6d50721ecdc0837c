"""The page in a real browser, driven as a user drives it: headless Chromium and its driver from Debian's
packages (installed by .ci/services.sh), Selenium given the driver's path so it downloads nothing. A real
`launch ui` process serves the page over a root folder of the test's."""

from __future__ import annotations

import json
import time

import pytest

from launcher.recipe.schema import all_keys
from tests.conftest import ROOT
from tests.ui.ui_helpers import (
    TINY_FORM,
    browser,
    click,
    click_tab,
    fill,
    launch_ui,
    wait_text,
    wait_until,
)

pytestmark = pytest.mark.services


def field_label(driver, key: str):
    return driver.find_element("css selector", f'label[data-key="{key}"]')


def points(driver, metric: str) -> int:
    """The points of a metric's curve as drawn now (0: not drawn); read in one step, as the page redraws."""
    script = f"const c = document.getElementById('curve-{metric}'); return c ? Number(c.dataset.points) : 0"
    return driver.execute_script(script)


def test_the_form_shows_every_key_and_loads_a_recipe_file(tmp_path):
    with launch_ui(tmp_path, token="t0ken") as base, browser(tmp_path) as driver:
        driver.get(f"{base}/?token=t0ken")
        wait_until(driver, lambda d: d.find_elements("name", "model.path"))
        names = {e.get_attribute("name") for e in driver.find_elements("css selector", "#form [name]")}
        keys = {key for key, spec in all_keys().items() if spec.kind != "section"}
        assert keys - names == set(), "schema keys missing from the form"
        assert driver.find_element("id", "command").text == "launch recipes/recipe.yaml"
        # stage- and method-specific keys: shown only under their stage / method
        assert not field_label(driver, "train.pref_beta").is_displayed()
        assert field_label(driver, "method.rank").is_displayed()  # lora, the default method
        fill(driver, {"stage": "dpo", "method.name": "full"})
        assert field_label(driver, "train.pref_beta").is_displayed()
        assert not field_label(driver, "method.rank").is_displayed()
        # a recipe file loaded into the form: its keys land in their fields, and it validates as the CLI does
        driver.find_element("id", "load").send_keys(str(ROOT / "recipes" / "sft_tiny.yaml"))
        wait_until(driver, lambda d: d.find_element("name", "model.path").get_attribute("value"))
        value = lambda key: driver.find_element("name", key).get_attribute("value")  # noqa: E731
        assert (value("model.path"), value("stage"), value("method.name"), value("method.rank")) == (
            "builtin:tiny-qwen2",
            "sft",
            "lora",
            "8",
        )
        assert (value("data.datasets"), value("train.lr"), value("train.pref_beta")) == ("[demo_sft]", "0.005", "")
        assert driver.find_element("id", "name").get_attribute("value") == "sft_tiny"
        wait_text(driver, "answer", "valid: the CLI would accept this recipe")


def test_compose_plan_train_watch_evaluate_chat_and_merge(tmp_path):
    """The whole flow on one tiny run: a refusal beside its field, the data preview, the plan, a run
    whose loss curve grows until it finishes, its adapter evaluated on the eval data, chat replies from its
    adapter and its base, a merged model."""
    with launch_ui(tmp_path) as base, browser(tmp_path) as driver:
        driver.get(base + "/")
        wait_until(driver, lambda d: d.find_elements("name", "model.path"))
        driver.find_element("id", "name").clear()
        driver.find_element("id", "name").send_keys("tiny")
        fill(driver, {**TINY_FORM, "train.lr": "-1"})
        wait_until(driver, lambda d: "refused" in field_label(d, "train.lr").get_attribute("class"))
        refusal = field_label(driver, "train.lr").find_element("class name", "refusal").text
        assert "recipes/tiny.yaml:" in refusal and "train.lr" in refusal and "Fix:" in refusal
        fill(driver, {"train.lr": "5e-3"})
        wait_text(driver, "answer", "valid: the CLI would accept this recipe")
        assert not field_label(driver, "train.lr").find_element("class name", "refusal").text

        click(driver, "preview")  # tokenizes in the page's process while the plan and the run go on; read below
        click(driver, "plan")
        wait_text(driver, "answer", "world")
        click(driver, "start")
        wait_text(driver, "answer", "started:")
        click_tab(driver, "runs")
        seen = []  # the loss curve's points as the page redraws it
        deadline = time.monotonic() + 240
        while "finished" not in driver.find_element("id", "selected").text:
            assert time.monotonic() < deadline, driver.find_element("id", "consoles").text
            seen.append(points(driver, "loss"))
            time.sleep(0.2)
        final = wait_until(driver, lambda d: points(d, "loss"))
        assert final == 8 and any(0 < drawn < 8 for drawn in seen), seen  # drawn midway, then whole
        assert driver.find_element("id", "progress").get_attribute("value") == "100"
        click_tab(driver, "train")
        wait_text(driver, "rows", "trained in ⟦ ⟧", timeout=120)
        assert "⟦" in driver.find_element("id", "rows").text.split("trained in ⟦ ⟧")[1]  # a row's trained part
        click_tab(driver, "runs")
        assert {"curve-learning_rate", "curve-grad_norm", "curve-tokens_per_second"} <= {
            e.get_attribute("id") for e in driver.find_elements("css selector", "#curves svg")
        }

        # evaluate, chat and merge at once, as a user may: each a child `launch` process
        click_tab(driver, "evaluate")
        fill(driver, {"eval-datasets": "demo_dev"}, by="id")
        click(driver, "eval")
        click_tab(driver, "chat")
        fill(driver, {"chat-prompt": "1+1="}, by="id")
        click(driver, "chat-compare")  # the base model answers beside the adapter
        click(driver, "chat-send")
        click_tab(driver, "export")
        fill(driver, {"merge-out": "merged/tiny"}, by="id")
        click(driver, "merge")
        wait_text(driver, "export-answer", "written: merged/tiny", timeout=180)
        click_tab(driver, "chat")
        reply = driver.find_element("id", "chat-reply")
        wait_until(driver, lambda d: reply.get_attribute("data-state") != "running", timeout=180)
        assert reply.get_attribute("data-state") == "done", reply.text  # the adapter answered
        assert driver.find_element("id", "chat-base-reply").text  # and the base model beside it
        click_tab(driver, "evaluate")
        wait_text(driver, "eval-answer", "written: eval/tiny", timeout=180)
        scores = {
            row.find_elements("tag name", "td")[0].text
            for row in driver.find_elements("css selector", "#eval-scores tr")
        }
        assert {"predict_bleu-4", "predict_rouge-1", "predict_rouge-l"} <= scores
        labels = [
            row.find_elements("tag name", "td")[1].text
            for row in driver.find_elements("css selector", "#eval-predictions tr")
        ]
        assert labels == [row["output"] for row in json.loads((ROOT / "data" / "demo_dev.json").read_text())]
    merged = tmp_path / "merged" / "tiny"
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    assert (tmp_path / "recipes" / "tiny.yaml").is_file() and (tmp_path / "outputs" / "tiny" / "plan.json").is_file()
