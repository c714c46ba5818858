"""Video I/O on real fixture clips and on files the test writes."""
from __future__ import annotations

import numpy as np
import pytest

from src.errors import UserError
from src.video_io import iter_frames, probe, read_audio, read_frames, write_video


def test_reads_a_real_voxceleb2_fixture_clip(fixtures_dir):
    clip = sorted((fixtures_dir / "voxceleb2_mini" / "dev" / "mp4").glob("*/*/*.mp4"))[0]
    info = probe(clip)
    frames = read_frames(clip)
    assert frames.shape == (info.frames, info.height, info.width, 3)
    assert 480 <= info.width <= 720 and 25 <= info.fps <= 30
    assert frames.std() > 10  # real content, not a blank frame


def test_round_trip_with_audio(tmp_path):
    rng = np.random.default_rng(0)
    frames = [np.full((64, 96, 3), 40 + 8 * i, np.uint8) for i in range(20)]
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    out = write_video(tmp_path / "a.mp4", frames, fps=25,
                      audio=audio + 0.001 * rng.standard_normal(16000).astype(np.float32))
    info = probe(out)
    assert (info.width, info.height, info.frames, info.has_audio) == (96, 64, 20, True)
    back = read_frames(out)
    assert np.abs(back.astype(int) - np.stack(frames).astype(int)).mean() < 3
    samples, rate = read_audio(out)
    assert rate == 16000 and abs(np.sqrt(np.mean(samples**2)) - 0.3 / np.sqrt(2)) < 0.03


def test_interrupted_write_leaves_nothing(tmp_path):
    def frames():
        yield np.zeros((32, 32, 3), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "b.mp4", frames())
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_empty_files_give_clear_errors(tmp_path, fixtures_dir):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(1000))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (bad, empty):
        with pytest.raises(UserError, match=str(path.name)):
            probe(path)
        with pytest.raises(UserError):
            list(iter_frames(path))


def test_audio_streams_in_chunks_and_can_be_cut_at_the_video_end(tmp_path):
    rate = 16000
    tone = (0.3 * np.sin(np.arange(2 * rate) / rate * 2 * np.pi * 440)).astype(np.float32)  # 2 s
    frames = [np.full((32, 32, 3), i * 10, np.uint8) for i in range(25)]                    # 1 s at 25 fps
    sizes = [1, 777, 5000, 3, 20000]  # chunks of any length, taken one at a time after the frames
    chunks = np.split(tone, np.cumsum(sizes))
    whole = write_video(tmp_path / "whole.mp4", frames, fps=25, audio=iter(chunks), sample_rate=rate)
    cut = write_video(tmp_path / "cut.mp4", frames, fps=25, audio=iter(chunks), sample_rate=rate,
                      audio_to_video_end=True)
    samples_whole, _ = read_audio(whole)
    samples_cut, _ = read_audio(cut)
    assert abs(samples_whole.shape[1] / rate - 2.0) < 0.1 and abs(samples_cut.shape[1] / rate - 1.0) < 0.1
    # the same tone as written in one array
    one = write_video(tmp_path / "one.mp4", frames, fps=25, audio=tone, sample_rate=rate)
    a, b = read_audio(one)[0], samples_whole
    n = min(a.shape[1], b.shape[1])
    assert np.abs(a[:, :n] - b[:, :n]).max() < 1e-3
