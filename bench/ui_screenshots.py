"""Screenshots of `launch ui`'s tabs for docs/ui.md and the README, taken as the browser test drives the
page (tests/ui/ui_helpers.py: a real `launch ui`, Debian's headless chromium through Selenium, no download):
the tiny recipe loaded into the form with a refusal beside its field, a finished tiny run with its curves,
its evaluation, a chat reply beside the base model's, a merge. One tiny run, in a temporary root folder.

    python bench/ui_screenshots.py [--out docs/images]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ui.ui_helpers import TINY_FORM, browser, click, click_tab, fill, launch_ui, wait_text, wait_until  # noqa: E402

COLORS = 64  # a palette PNG: a screenshot of a form is a few colours, a tenth of the RGB file


def save(driver, path: Path) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(COLORS).save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KiB)", flush=True)


def wait_done(driver, element_id: str) -> None:
    element = driver.find_element("id", element_id)
    wait_until(driver, lambda d: element.get_attribute("data-state") in ("done", "failed"), timeout=600)


def shoot(root: Path, out: Path) -> None:
    with launch_ui(root) as base, browser(root, width=1280, height=860) as driver:
        driver.get(base + "/")
        wait_until(driver, lambda d: d.find_elements("name", "model.path"))
        driver.find_element("id", "name").clear()
        driver.find_element("id", "name").send_keys("tiny")
        fill(driver, {**TINY_FORM, "train.max_steps": "10", "train.save_steps": "5", "train.lr": "-1"})
        wait_until(driver, lambda d: d.find_elements("css selector", "label.refused"))
        driver.execute_script("document.querySelector('label.refused').scrollIntoView({block: 'center'})")
        save(driver, out / "ui-train.png")
        fill(driver, {"train.lr": "5e-3"})
        wait_text(driver, "answer", "valid")
        click(driver, "start")
        wait_text(driver, "answer", "started:")
        click_tab(driver, "runs")
        wait_text(driver, "selected", "finished", timeout=600)
        time.sleep(2.5)  # one more poll draws the last rows
        save(driver, out / "ui-runs.png")
        click_tab(driver, "evaluate")
        fill(driver, {"eval-datasets": "demo_dev"}, by="id")
        click(driver, "eval")
        wait_done(driver, "eval-answer")
        save(driver, out / "ui-evaluate.png")
        click_tab(driver, "chat")
        fill(driver, {"chat-prompt": "What is LoRA?"}, by="id")
        driver.find_element("id", "chat-compare").click()
        click(driver, "chat-send")
        wait_done(driver, "chat-reply")
        save(driver, out / "ui-chat.png")
        click_tab(driver, "export")
        fill(driver, {"merge-out": "merged/tiny"}, by="id")
        click(driver, "merge")
        wait_done(driver, "export-answer")
        save(driver, out / "ui-export.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as root:
        shoot(Path(root), args.out.resolve())


if __name__ == "__main__":
    main()
