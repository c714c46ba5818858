"""Shared by the benchmarks: the machine description, result files and the uint8 images' PSNR."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

RESULTS = Path("outputs/bench")
FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        rows = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(row for row in rows if row.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}){mem}, {gpu}, torch {torch.__version__}"


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=1))
    print(json.dumps(result, indent=1))
    return path


def untrained_generator(path: Path, overrides: list[str], id_dim: int = 128) -> Path:
    """A generator checkpoint of randomly initialised networks (seed 0) for the refine stage composed with
    `overrides` (e.g. ["model=demo"]): what the speed, memory and control benchmarks animate with."""
    import torch
    from omegaconf import OmegaConf

    from src.checkpoints import generator_checkpoint, save_checkpoint
    from src.config import compose
    from src.models.generator import build_generator

    cfg = OmegaConf.to_container(compose("refine", overrides), resolve=True)
    torch.manual_seed(0)
    return save_checkpoint(generator_checkpoint(build_generator(OmegaConf.create(cfg["model"]), id_dim), cfg, id_dim),
                           path)


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def headless_chromium(width: int = 1280, height: int = 1400):
    """Debian's Chromium under Selenium, headless, through Debian's ChromeDriver (apt-get install chromium
    chromium-driver: no browser download). The flags keep it off this machine's closed network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def start_app(args: list[str], log: Path):
    """`python -m src.app ARGS` in its own process, logging to `log`; (process, url) once it serves."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "src.app", "--port", str(port), *args], stdout=out,
                            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    deadline = time.time() + 180
    while "Running on local URL" not in log.read_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"the app did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}/"


def animate_in_page(browser, url: str, portrait: Path, driving: Path, timeout: float = 300):
    """Open the app at `url`, upload `portrait` and `driving`, press Animate and wait for the result video:
    the <video> element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, timeout)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#source input[type=file]")))
    browser.find_element(By.CSS_SELECTOR, "#source input[type=file]").send_keys(str(portrait))
    browser.find_element(By.CSS_SELECTOR, "#driving input[type=file]").send_keys(str(driving))
    for name in (portrait.stem, driving.stem):  # both uploads finished: the page lists their names
        wait.until(lambda b, name=name: name in b.find_element(By.TAG_NAME, "body").text)
    browser.find_element(By.CSS_SELECTOR, "#animate").click()
    video = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#result video")))
    wait.until(lambda b: (video.get_attribute("src") or "").endswith(".mp4"))
    return video


def psnr_u8(output: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None) -> float:
    """PSNR in dB of uint8 images (H, W, 3); `weight` (H, W) in [0, 1] restricts it to a region (a weighted mean
    of the squared error)."""
    err = (output.astype(np.float64) - target.astype(np.float64)) ** 2
    mse = err.mean() if weight is None else (err * weight[..., None]).sum() / (3 * weight.sum())
    return float(10 * np.log10(255.0**2 / max(mse, 1e-9)))
