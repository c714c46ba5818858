"""The web app (python -m src.app): started as a user starts it, on a local port, and driven through Gradio's
Python client and through a real headless Chromium."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from src.video_io import probe, read_audio

UPLOAD_LIMIT_MB = 4  # the test server's --max-upload-mb: above every fixture file, below the oversized one


@pytest.fixture(scope="module")
def driving_clip(fixtures_dir):
    return sorted((fixtures_dir / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]


@pytest.fixture(scope="module")
def person_clip(driving_clip, tmp_path_factory):
    """The first 40 frames of the real clip: a short video of one person, at test speed."""
    from src.video_io import read_frames, write_video

    return write_video(tmp_path_factory.mktemp("person") / "person.mp4", read_frames(driving_clip)[:40], fps=25)


@pytest.fixture(scope="module")
def portrait(fixtures_dir):
    return fixtures_dir / "portraits" / "portrait_a.jpg"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_generator_ckpt):
    """`python -m src.app` on a free port, with one finished refine run (its stages.json) under its --outputs,
    as a user starts it."""
    from benchmarks.common import start_app
    from src.lineage import record_stage

    root = tmp_path_factory.mktemp("app")
    run = root / "outputs" / "stage1" / "tiny"
    run.mkdir(parents=True)
    shutil.copyfile(tiny_generator_ckpt, run / "refine.ckpt")
    record_stage(run, "refine", status="done", checkpoint=str(run / "refine.ckpt"), finished=time.time())
    proc, url = start_app(["--outputs", str(root / "outputs"), "--device", "cpu", "--max-upload-mb",
                           str(UPLOAD_LIMIT_MB), "--samples", str(root)], root / "server.log")
    workdir = Path(re.search(r"session files go to (\S+);", (root / "server.log").read_text()).group(1))
    yield {"url": url, "outputs": root / "outputs", "checkpoint": run / "refine.ckpt", "log": root / "server.log",
           "workdir": workdir}
    proc.terminate()  # SIGTERM, as a service manager stops it
    proc.wait(timeout=30)
    assert not workdir.exists(), "the server left its session files behind"


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def _animate(client, server, source, driving, **controls):
    return _submit_animate(client, server, source, driving, **controls).result(timeout=600)


def _submit_animate(client, server, source, driving, **controls):
    from gradio_client import handle_file

    values = dict(generator=str(server["checkpoint"]), use_sr=False, sr=None, motion="relative", paste=False,
                  smooth=1, parts="both", expression_scale=1.0, eyes="driving", lips="driving", lip_scale=1.0,
                  face="largest", v2v=False, colour=True)
    values.update(controls)
    return client.submit(handle_file(str(source)), handle_file(str(driving)), *values.values(), api_name="/animate")


def _video_path(value) -> Path:
    """A gr.Video output as the client hands it back: a path, or {"video": path, "subtitles": ...}."""
    return Path(value["video"] if isinstance(value, dict) else value)


def _error(call) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        call()
    return str(info.value)


def test_the_server_binds_to_loopback_and_lists_the_finished_checkpoint(server, client):
    from src.app import LOOPBACK, parse_args

    assert parse_args([]).host == LOOPBACK and not parse_args([]).share
    assert server["url"].startswith(f"http://{LOOPBACK}:")
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    picker = next(p for p in info["/animate"]["parameters"] if p["parameter_name"] == "generator")
    assert picker["parameter_default"] == str(server["checkpoint"].resolve())


def test_animate_returns_an_mp4_with_the_driving_clips_frames_and_audio(server, client, portrait, driving_clip):
    video, download, summary = _animate(client, server, portrait, driving_clip)
    info, driving = probe(_video_path(video)), probe(driving_clip)
    assert info.frames == driving.frames == summary["frames"], (info, driving)
    assert info.has_audio and summary["audio"]
    audio, rate = read_audio(_video_path(video))
    assert audio.shape[1] / rate == pytest.approx(driving.frames / driving.fps, abs=0.15)
    assert Path(download).read_bytes() == _video_path(video).read_bytes()
    assert "output" not in summary  # no server paths in the page


def test_bad_uploads_and_paths_are_messages_and_the_app_keeps_serving(server, client, portrait, driving_clip,
                                                                       tmp_path):
    faceless = tmp_path / "wall.png"
    cv2.imwrite(str(faceless), np.tile(np.linspace(40, 220, 256, dtype=np.uint8), (256, 1))[..., None].repeat(3, 2))
    assert "no face" in _error(lambda: _animate(client, server, faceless, driving_clip))
    fake = tmp_path / "photo.jpg"
    fake.write_bytes(os.urandom(4096))  # an image by its name, noise by its content
    assert "not a readable image or video" in _error(lambda: _animate(client, server, fake, driving_clip))
    assert "only checkpoints inside" in _error(lambda: _animate(client, server, portrait, driving_clip,
                                                                generator="/etc/passwd"))
    wrong_kind = server["outputs"] / "stage1" / "notes.ckpt"
    wrong_kind.write_text("not a checkpoint")
    assert "not a torch checkpoint" in _error(lambda: _animate(client, server, portrait, driving_clip,
                                                               generator=str(wrong_kind)))
    # the slider refuses it first (Gradio's own check), before src.controls would
    assert "greater than maximum value 3" in _error(lambda: _animate(client, server, portrait, driving_clip,
                                                                     lip_scale=7.0))
    assert "--lip-scale scales the driver's mouth" in _error(
        lambda: _animate(client, server, portrait, driving_clip, lips="source", lip_scale=2.0))
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom((UPLOAD_LIMIT_MB + 1) * 2**20))
    with pytest.raises(Exception, match="(?i)too large|size|413"):
        _animate(client, server, portrait, big)
    # still serving, and right; the page's controls reach the shared animate
    video, _, summary = _animate(client, server, portrait, driving_clip, smooth=9, expression_scale=0.5,
                                 eyes="source")
    assert summary["frames"] == probe(driving_clip).frames
    assert (summary["smooth"], summary["expression_scale"], summary["eyes"]) == (9, 0.5, "source")
    # no unexpected fault in the app's own code (Gradio logs its own slider refusal with a traceback)
    assert "/src/" not in server["log"].read_text(), server["log"].read_text()[-3000:]


def test_personalize_reports_and_writes_a_checkpoint_that_loads_and_joins_the_picker(server, client, person_clip):
    from gradio_client import handle_file

    from src.checkpoints import load_generator

    table, preview, report, ckpt, picked = client.predict(handle_file(str(person_clip)), str(server["checkpoint"]),
                                                          6, 0, api_name="/personalize")
    assert report["steps"] == 6 and {"before", "after"} <= set(report["heldout"])
    assert "| psnr |" in table.lower() and "before" in table
    ckpt = Path(ckpt)
    assert ckpt.is_file() and ckpt.resolve().is_relative_to(server["outputs"].resolve() / "personalized")
    assert not ckpt.with_suffix(".work").exists()  # the resume state of a finished run is gone
    generator, cfg, _ = load_generator(ckpt)
    assert cfg["model"]["resolution"] == 64
    assert probe(_video_path(preview)).frames > 0
    # the picker switches to the new model, and lists it (with its stage, preset and size) from now on
    assert picked["value"] == str(ckpt.resolve())
    refreshed, _, _ = client.predict(api_name="/refresh")
    for update in (picked, refreshed):
        assert [str(ckpt.resolve()), f"personalize · tiny · 64 px · {ckpt.resolve()}"] in \
            [[value, label] for label, value in update["choices"]], update["choices"]
    assert refreshed["value"] == str(ckpt.resolve())  # the newest personalized model is the default


def test_cancelling_personalization_keeps_nothing_and_jobs_queue(server, client, person_clip, portrait,
                                                                  driving_clip):
    from gradio_client import handle_file

    before = set((server["outputs"] / "personalized").glob("*")) if (server["outputs"] / "personalized").exists() \
        else set()
    job = client.submit(handle_file(str(person_clip)), str(server["checkpoint"]), 5000, 0, api_name="/personalize")
    deadline = time.time() + 240
    while "step" not in str(getattr(job.status(), "progress_data", "") or ""):
        assert time.time() < deadline and not job.done(), f"no training step reported: {job.status()}"
        time.sleep(0.5)
    # one job at a time on the device: another page's animate waits in the queue, with its position shown
    from gradio_client import Client

    other = Client(server["url"], verbose=False)
    waiting = _submit_animate(other, server, portrait, driving_clip)
    time.sleep(3)
    status = waiting.status()
    assert status.code.name == "IN_QUEUE" and status.rank is not None, status
    client.predict(api_name="/cancel")
    assert "cancelled" in _error(job.result)
    _, _, summary = waiting.result(timeout=300)  # then it runs
    assert summary["frames"] == probe(driving_clip).frames
    after = set((server["outputs"] / "personalized").glob("*"))
    assert after == before, f"a cancelled job left {sorted(map(str, after - before))}"


def test_personalizing_a_faceless_video_is_a_message(server, client, tmp_path):
    from gradio_client import handle_file

    from src.video_io import write_video

    wall = np.tile(np.linspace(40, 220, 128, dtype=np.uint8), (128, 1))[..., None].repeat(3, 2)
    video = write_video(tmp_path / "wall.mp4", [np.roll(wall, i, axis=1) for i in range(30)], fps=25)
    message = _error(lambda: client.predict(handle_file(str(video)), str(server["checkpoint"]), 4, 0,
                                            api_name="/personalize"))
    assert "face" in message and "Traceback" not in message and len(message.splitlines()) == 1, message
    assert not list((server["outputs"] / "personalized").glob("wall-*"))  # nothing of the failed job is left


def test_the_model_picker_reads_finished_runs_and_prefers_personalized_then_meta(tmp_path, tiny_generator_ckpt):
    from src.app import AppSettings, build_app
    from src.catalog import default_generator, find_models
    from src.lineage import record_stage

    outputs = tmp_path / "outputs"
    assert find_models(outputs) == [] and default_generator([]) is None
    for stage, run, t in (("refine", "stage1/a", 1.0), ("meta", "meta/b", 2.0), ("refine", "stage1/c", 3.0)):
        (outputs / run).mkdir(parents=True)
        shutil.copyfile(tiny_generator_ckpt, outputs / run / "last.ckpt")
        record_stage(outputs / run, stage, status="done", checkpoint=str(outputs / run / "last.ckpt"), finished=t)
    (outputs / "stage1" / "torn").mkdir()
    (outputs / "stage1" / "torn" / "stages.json").write_text("{not json")  # skipped, not an error
    shutil.copyfile(tiny_generator_ckpt, outputs / "stage1" / "unrecorded.ckpt")  # no record: not offered
    models = find_models(outputs)
    assert [(m.stage, m.preset, m.resolution) for m in models] == [("refine", "tiny", "64 px"),
                                                                  ("meta", "tiny", "64 px"),
                                                                  ("refine", "tiny", "64 px")]
    assert default_generator(models).stage == "meta"  # newer refine runs do not outrank a meta model
    person = outputs / "personalized" / "me.ckpt"
    person.parent.mkdir()
    shutil.copyfile(tiny_generator_ckpt, person)
    person.with_name("me.report.json").write_text("{}")
    assert default_generator(find_models(outputs)).path == person.resolve()
    # with nothing to offer, the page says how to get a model
    empty = build_app(AppSettings(outputs=tmp_path / "none", samples=tmp_path, workdir=tmp_path / "sessions"))
    notes = [b.value for b in empty.blocks.values() if type(b).__name__ == "Markdown" and "make demo" in str(b.value)]
    assert notes and "No generator checkpoint" in notes[0]


def test_a_public_host_warns(tmp_path):
    out = subprocess.run([sys.executable, "-m", "src.app", "--host", "0.0.0.0", "--checkpoint",
                          str(tmp_path / "missing.ckpt")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "warning: --host 0.0.0.0 serves the app to every machine" in out.stderr
    assert "missing.ckpt does not exist" in out.stderr and "Traceback" not in out.stderr


def _browser():
    """Debian's Chromium; missing outside CI is a skip, in CI a failure (.ci/run installs it)."""
    from benchmarks.common import CHROMEDRIVER, CHROMIUM, headless_chromium

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: .ci/run installs chromium and chromium-driver")
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver (CI installs them)")
    return headless_chromium()


def test_the_page_animates_in_a_real_browser(server, portrait, driving_clip, tmp_path):
    from selenium.webdriver.common.by import By

    from benchmarks.common import animate_in_page

    before, sessions = set(server["workdir"].iterdir()), set()
    browser = _browser()
    try:
        video = animate_in_page(browser, server["url"], portrait, driving_clip)
        browser.execute_script("arguments[0].scrollIntoView()", video)
        time.sleep(1)  # the player's first frame
        shot = tmp_path / "app.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        assert "Error" not in browser.find_element(By.TAG_NAME, "body").text
        sessions = {p for p in server["workdir"].iterdir() if any(p.glob("animation-*.mp4"))} - before
        assert len(sessions) == 1, sessions  # this page's own folder holds its result
    finally:
        browser.quit()
    deadline = time.time() + 90
    while any(p.exists() for p in sessions):  # the tab is gone: Gradio ends the session, its files go
        assert time.time() < deadline, f"the closed page's files stayed: {sessions}"
        time.sleep(1)
