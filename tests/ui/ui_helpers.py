"""A `launch ui` server (in this process, or the real command), and a headless Chromium driven through
Selenium with Debian's chromium and chromedriver (installed by .ci/services.sh; Selenium Manager never
runs: the driver's path is given)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from launcher.ui.server import make_server
from tests.conftest import ROOT, free_port

CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver; keep in step with .ci/services.sh
# the tiny recipe as typed into the form (the browser test, bench/ui_screenshots.py): one process, a few
# logged steps, a save (and so trainer_log.jsonl rewritten) after each: on a quiet machine a step and its save
# take a fraction of a second, and the page, polling a running run 4 times a second, sees the curve grow
TINY_FORM = {
    "model.path": "builtin:tiny-qwen2",
    "model.dtype": "fp32",
    "data.datasets": "[demo_sft]",
    "data.dataset_dir": str(ROOT / "data"),
    "data.cutoff_len": "128",
    "train.max_steps": "8",
    "train.save_steps": "1",
    "train.logging_steps": "1",
    "train.micro_batch_size": "2",
    "train.grad_accum": "1",
    "train.gradient_checkpointing": "false",
    "eval.max_new_tokens": "4",
    "distributed.engine": "ddp",
    "distributed.nproc_per_node": "1",
}


@contextmanager
def ui_server(root: Path, token: str | None = None) -> Iterator[str]:
    """The base URL of a running server; shut down on exit."""
    server = make_server(root, "127.0.0.1", 0, token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def launch_ui(root: Path, token: str | None = None) -> Iterator[str]:
    """`launch ui --root ROOT` as a user starts it; the base URL once it printed it."""
    port = free_port()
    command = [sys.executable, "-m", "launcher.cli", "ui", "--root", str(root), "--port", str(port)]
    command += ["--token", token] if token else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "[ui] http://127.0.0.1:PORT/ ..." once it listens
        assert line.startswith("[ui] http://"), line + proc.stdout.read()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None or not Path(CHROMEDRIVER).is_file():  # never skipped: CI must run this
        pytest.fail(
            "chromium or chromedriver not installed. Fix: run .ci/services.sh as root (it apt-get installs both)"
        )
    return found


@contextmanager
def browser(tmp_path: Path, width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)  # --no-sandbox: as root in a container
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, condition: Callable, timeout: float = 60):
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def wait_text(driver, element_id: str, text: str, timeout: float = 60) -> None:
    """Until the element shows `text`; a timeout names what it showed instead."""
    from selenium.common.exceptions import TimeoutException

    try:
        wait_until(driver, lambda d: text in d.find_element("id", element_id).text, timeout)
    except TimeoutException:
        pytest.fail(f"#{element_id} never showed {text!r}; it shows:\n{driver.find_element('id', element_id).text}")


def fill(driver, values: dict[str, str], by: str = "name") -> None:
    """Type or pick each value as a user does; leaving the field fires its change."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    for key, value in values.items():
        element = driver.find_element(by, key)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        if element.tag_name == "select":
            Select(element).select_by_value(value)
        else:
            element.clear()
            element.send_keys(value, Keys.TAB)


def click(driver, element_id: str) -> None:
    """Scrolled into view first, as a user scrolls to a button."""
    element = driver.find_element("id", element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def click_tab(driver, tab: str) -> None:
    driver.find_element("css selector", f'nav button[data-tab="{tab}"]').click()
