"""The bad-input and fault corpus: every command given broken, hostile and odd input, built here from the real
fixtures. A refused case exits with code 2 and a few lines on stderr, no traceback, every input byte-for-byte
unchanged and no partial output. Odd but valid input (CMYK, alpha, an 8000-pixel picture, a non-ASCII path,
a damaged driving clip) is animated, with a warning where something was wrong with it."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import lightning  # noqa: F401  first imported at collection: its log handler must not keep a test's closed stderr
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src import animate, evaluate, personalize, preprocess, train, upscale
from src.checkpoints import save_checkpoint
from src.config import compose
from src.files import fingerprint
from src.video_io import probe, read_frames, write_video
from tests.conftest import REPO, _faceless_video


class _Payload:
    """Pickled into a checkpoint: unpickling it would create the marker file (safe loading must refuse it)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _faststart_truncated(src: Path, dst: Path, keep: float = 0.25) -> Path:
    """`src` remuxed with its index at the front (as web video usually is), then cut to `keep` of its bytes:
    the container still declares every frame, but only the first ones decode."""
    full = dst.with_name("full_" + dst.name)
    with av.open(str(src)) as i, av.open(str(full), "w", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams if s.type in ("video", "audio")}
        for packet in i.demux():
            if packet.dts is not None and packet.stream.index in streams:
                packet.stream = streams[packet.stream.index]
                o.mux(packet)
    data = full.read_bytes()
    full.unlink()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fixtures_dir, tiny_generator_ckpt) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    c: dict[str, Path] = {"root": root, "ckpt": tiny_generator_ckpt, "marker": root / "PWNED"}

    def put(key: str, name: str, data: bytes | None = None) -> Path:
        c[key] = root / name
        if data is not None:
            c[key].write_bytes(data)
        return c[key]

    real = sorted((fixtures_dir / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]
    write_video(put("clip", "clip.mp4"), read_frames(real)[:16], fps=25)
    shutil.copy(fixtures_dir / "portraits" / "portrait_a.jpg", put("portrait", "portrait.jpg"))
    bgr = cv2.imread(str(c["portrait"]))
    # videos
    put("zero_mp4", "zero.mp4", b"")
    put("random_mp4", "random.mp4", np.random.default_rng(0).bytes(50_000))
    put("moov_end_truncated", "moov_end_truncated.mp4", real.read_bytes()[: real.stat().st_size // 3])
    _faststart_truncated(real, put("faststart_truncated", "faststart_truncated.mp4"))
    _faceless_video(put("noface_mp4", "noface.mp4"))
    write_video(put("one_frame", "one_frame.mp4"), read_frames(real)[:1], fps=25)
    # pictures
    put("text_png", "text.png", b"this is not an image\n")
    yy, xx = np.mgrid[0:240, 0:320]
    cv2.imwrite(str(put("noface_png", "noface.png")), np.stack([xx % 256, yy % 256, xx * 0 + 90], -1).astype(np.uint8))
    cv2.imwrite(str(put("one_pixel", "one_pixel.png")), bgr[:1, :1])
    other = cv2.imread(str(fixtures_dir / "portraits" / "portrait_b.jpg"))
    h = min(bgr.shape[0], other.shape[0])
    two = np.concatenate([cv2.resize(x, (x.shape[1] * h // x.shape[0], h)) for x in (bgr, other)], axis=1)
    cv2.imwrite(str(put("two_faces", "two_faces.jpg")), two)
    canvas = np.full((480, 640, 3), 200, np.uint8)
    w = 24 * bgr.shape[1] // bgr.shape[0]
    canvas[200:224, 300:300 + w] = cv2.resize(bgr, (w, 24), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(put("tiny_face", "tiny_face.png")), canvas)
    from PIL import Image

    Image.open(c["portrait"]).convert("CMYK").save(put("cmyk", "cmyk.jpg"))
    Image.open(c["portrait"]).convert("RGBA").save(put("alpha", "alpha.png"))
    scale = 8000 / max(bgr.shape[:2])
    cv2.imwrite(str(put("huge", "huge.jpg")), cv2.resize(bgr, None, fx=scale, fy=scale))
    (root / "ünïcödé 顔").mkdir()
    shutil.copy(c["portrait"], put("nonascii_portrait", "ünïcödé 顔/pörträit 1.jpg"))
    # checkpoints
    put("zero_ckpt", "zero.ckpt", b"")
    put("junk_ckpt", "junk.ckpt", b"not a checkpoint\n")
    put("truncated_ckpt", "truncated.ckpt", tiny_generator_ckpt.read_bytes()[:5000])
    save_checkpoint({"state_dict": {"generator.x": _Payload(c["marker"])}}, put("pickle_ckpt", "pickle.ckpt"))
    torch.save(torch.zeros(3), put("tensor_ckpt", "tensor.ckpt"))
    torch.save([1, 2, 3], put("list_ckpt", "list.ckpt"))
    torch.save({"hello": "world"}, put("dict_ckpt", "dict.ckpt"))
    from src.models.temporal_sr import build_sr

    sr_cfg = OmegaConf.to_container(compose("sr", ["model=tiny"]), resolve=True)
    net = build_sr(OmegaConf.create(sr_cfg["model"]))
    save_checkpoint({"state_dict": {"net." + k: v for k, v in net.state_dict().items()},
                     "hyper_parameters": {"cfg": sr_cfg}}, put("sr_ckpt", "sr.ckpt"))
    return c


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory, shards) -> dict[str, Path]:
    """Copies of the session's shards: one whose litdata index asks for pickle, one with a torn manifest."""
    root = tmp_path_factory.mktemp("bad_shards")
    pickled = Path(shutil.copytree(shards, root / "pickle_index"))
    for index in pickled.glob("*/index.json"):
        data = json.loads(index.read_text())
        data["config"]["data_format"][0] = "pickle"
        index.write_text(json.dumps(data))
    torn = Path(shutil.copytree(shards, root / "torn_manifest"))
    (torn / "manifest.json").write_text((torn / "manifest.json").read_text()[:40])
    return {"pickle_index": pickled, "torn_manifest": torn}


# ------------------------------------------------------------------------------------------ helpers
def _call(main, argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _s(argv) -> list[str]:
    return [str(a) for a in argv]


def _hashes(*roots: Path) -> dict[str, str]:
    files = [p for r in roots for p in ([r] if Path(r).is_file() else sorted(Path(r).rglob("*")))]
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in files if p.is_file() and not p.is_symlink()}


def _partials(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".partial")] if Path(folder).is_dir() else []


def refused(main, argv, capsys, expect: str | tuple[str, ...], inputs: list[Path], outputs: list[Path] = ()) -> str:
    """Run a command that must refuse: exit 2, a few lines, no traceback, `expect` said, inputs unchanged, none
    of `outputs` (which did not exist before) written, nothing partial left beside them; stderr."""
    before = _hashes(*inputs)
    existed = {Path(o) for o in outputs if Path(o).exists()}
    code, _, err = _call(main, argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and 1 <= len(lines) <= 3, err
    assert all(e in err for e in ([expect] if isinstance(expect, str) else expect)), err
    assert _hashes(*inputs) == before
    for o in map(Path, outputs):
        assert o in existed or not o.exists(), f"{o} was written"
        assert not _partials(o.parent), _partials(o.parent)
    return err


def _frames(path: Path) -> int:
    return len(read_frames(path))


# ------------------------------------------------------------------------------------------ animate
ANIMATE_REFUSED = {
    # (flag, corpus key or a callable of (corpus, out folder)), message
    "checkpoint missing": ("--checkpoint", lambda c, o: c["root"] / "nope.ckpt", "does not exist"),
    "checkpoint is a folder": ("--checkpoint", lambda c, o: c["root"], "is a folder, not a file"),
    "checkpoint zero bytes": ("--checkpoint", "zero_ckpt", "is empty (0 bytes)"),
    "checkpoint text": ("--checkpoint", "junk_ckpt", "is not a torch checkpoint"),
    "checkpoint truncated": ("--checkpoint", "truncated_ckpt", "is truncated or damaged"),
    "checkpoint pickle": ("--checkpoint", "pickle_ckpt", "safe loading (weights_only) refuses"),
    "checkpoint tensor": ("--checkpoint", "tensor_ckpt", "holds a Tensor, not a checkpoint"),
    "checkpoint list": ("--checkpoint", "list_ckpt", "holds a list, not a checkpoint"),
    "checkpoint foreign dict": ("--checkpoint", "dict_ckpt", "is not a generator checkpoint"),
    "checkpoint of SR": ("--checkpoint", "sr_ckpt", "is not a generator checkpoint"),
    "sr checkpoint of a generator": ("--sr-checkpoint", "ckpt", "is not a super-resolution checkpoint"),
    "source zero bytes": ("--source", "zero_mp4", "is empty (0 bytes)"),
    "source random bytes": ("--source", "random_mp4", "is not a readable image or video"),
    "source text as png": ("--source", "text_png", "is not a readable image or video"),
    "source truncated (index at the end)": ("--source", "moov_end_truncated", "is not a readable image or video"),
    "source without a face": ("--source", "noface_png", "no face found"),
    "source 1x1": ("--source", "one_pixel", "no face found"),
    "source with a tiny face": ("--source", "tiny_face", "--source"),
    "source is a folder": ("--source", lambda c, o: c["root"], "is a folder, not a file"),
    "driving zero bytes": ("--driving", "zero_mp4", "is empty (0 bytes)"),
    "driving random bytes": ("--driving", "random_mp4", "is not a readable image or video"),
    "driving is an image": ("--driving", "portrait", "is an image, not a video"),
    "driving truncated (index at the end)": ("--driving", "moov_end_truncated", "is not a readable image or video"),
    "driving without a face": ("--driving", "noface_mp4", "no face found"),
    "driving of 1 frame": ("--driving", "one_frame", "needs at least 2"),
    "output is a folder": ("--output", lambda c, o: o, "is a folder, not a file"),
    "output not mp4": ("--output", lambda c, o: o / "a.avi", "the output is a .mp4 file"),
    "output folder read-only": ("--output", lambda c, o: Path("/proc/metaportrait-corpus/a.mp4"), "cannot write"),
    "output folder is a file": ("--output", lambda c, o: c["portrait"] / "a.mp4", "is a file"),
    "output is the driving video": ("--output", "clip", "overlaps --driving"),
    "batch size 0": ("--batch-size", lambda c, o: "0", "out of range"),
    "batch size absurd": ("--batch-size", lambda c, o: "-99999999999", "out of range"),
    "batch size text": ("--batch-size", lambda c, o: "lots", "not an integer"),
    "smooth window even": ("--smooth", lambda c, o: "4", "is even"),
    "smooth window too short": ("--smooth", lambda c, o: "1", "out of range"),
    "expression scale negative": ("--expression-scale", lambda c, o: "-1", "must be in [0, 3]"),
    "expression scale absurd": ("--expression-scale", lambda c, o: "50", "must be in [0, 3]"),
    "motion parts unknown": ("--motion-parts", lambda c, o: "hair", "invalid choice"),
    "eyes unknown": ("--eyes", lambda c, o: "winking", "invalid choice"),
    "lip scale absurd": ("--lip-scale", lambda c, o: "9", "must be in [0, 3]"),
    "motion unknown": ("--motion", lambda c, o: "sideways", "invalid choice"),
}


def _animate_argv(c, out: Path, **flags) -> list:
    args = {"--checkpoint": c["ckpt"], "--source": c["portrait"], "--driving": c["clip"], "--output": out / "a.mp4",
            **flags}
    return [x for k, v in args.items() for x in (k, v)] + ["--quiet"]


@pytest.mark.parametrize("case", list(ANIMATE_REFUSED))
def test_animate_refuses(case, corpus, tmp_path, capsys):
    flag, value, expect = ANIMATE_REFUSED[case]
    value = value(corpus, tmp_path) if callable(value) else corpus[value]
    refused(animate.main, _animate_argv(corpus, tmp_path, **{flag: value}), capsys, expect, [corpus["root"]],
            [tmp_path / "a.mp4"])
    assert not corpus["marker"].exists()  # nothing in the pickle ran


def test_animate_keeps_an_existing_output_without_overwrite(corpus, tmp_path, capsys):
    (tmp_path / "a.mp4").write_bytes(b"an earlier result")
    refused(animate.main, _animate_argv(corpus, tmp_path), capsys, "pass --overwrite", [corpus["root"], tmp_path])


@pytest.mark.parametrize("source", ["cmyk", "alpha", "huge", "nonascii_portrait", "two_faces", "clip"])
def test_animate_takes_odd_but_valid_sources(source, corpus, tmp_path, capsys):
    out = tmp_path / "ö 出力" / "a.mp4"
    code, stdout, err = _call(animate.main, _animate_argv(corpus, out.parent, **{"--source": corpus[source]}), capsys)
    assert code == 0, err
    assert _frames(out) == 16 and not _partials(out.parent)
    if source == "two_faces":
        assert "2 faces in two_faces.jpg; using the largest" in err


def test_animate_warns_about_a_damaged_driving_clip_and_uses_what_decodes(corpus, tmp_path, capsys):
    declared = probe(corpus["faststart_truncated"]).declared_frames
    code, _, err = _call(animate.main, _animate_argv(corpus, tmp_path, **{"--driving": corpus["faststart_truncated"]}),
                         capsys)
    assert code == 0, err
    decoded = _frames(tmp_path / "a.mp4")
    assert 2 <= decoded < declared / 2
    assert f"is damaged: {decoded} of the {declared} frames it declares could be decoded" in err


def test_animate_never_follows_a_planted_symlink(corpus, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "a.mp4"
    # the temporary names of the earlier scheme and of this one: a symlink there is never opened
    for name in (".a.partial.mp4", ".a.mp4.partial", ".a.mp4.abcd1234.partial"):
        (tmp_path / name).symlink_to(victim)
    code, _, err = _call(animate.main, _animate_argv(corpus, tmp_path), capsys)
    assert code == 0, err
    assert victim.read_text() == "precious" and out.is_file() and not out.is_symlink() and _frames(out) == 16
    # a symlink at the final name is replaced by the result, its target untouched
    out.unlink()
    out.symlink_to(victim)
    code, _, err = _call(animate.main, _animate_argv(corpus, tmp_path) + ["--overwrite"], capsys)
    assert code == 0, err
    assert victim.read_text() == "precious" and not out.is_symlink() and _frames(out) == 16


# ------------------------------------------------------------------------------------------ preprocess
def _vox(root: Path, clips: dict[str, Path]) -> Path:
    """A VoxCeleb2-style input ROOT/dev/mp4/<id>/v/00001.mp4 with a copy of each clip."""
    for identity, clip in clips.items():
        (root / "dev" / "mp4" / identity / "v").mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, root / "dev" / "mp4" / identity / "v" / "00001.mp4")
    return root


PRE = ["--splits", "dev", "--workers", "1", "--min-frames", "8", "--identity-backend", "dlib", "--quiet"]


@pytest.fixture(scope="module")
def vox_input(corpus, tmp_path_factory) -> Path:
    return _vox(tmp_path_factory.mktemp("vox") / "in", {"id1": corpus["clip"]})


PREPROCESS_REFUSED = {
    "output is the input": (lambda i, t: ["--input", i, "--output", i], "overlaps --input"),
    "output inside the input": (lambda i, t: ["--input", i, "--output", i / "dev"], "overlaps --input"),
    "input inside the output": (lambda i, t: ["--input", i, "--output", i.parent], "overlaps --input"),
    "input is a file": (lambda i, t: ["--input", next(i.rglob("*.mp4")), "--output", t / "o"],
                        "is a file, not a folder"),
    "input missing": (lambda i, t: ["--input", t / "nope", "--output", t / "o"], "does not exist"),
    "resolution negative": (lambda i, t: ["--input", i, "--output", t / "o", "--resolution", "-5"], "out of range"),
    "resolution absurd": (lambda i, t: ["--input", i, "--output", t / "o", "--resolution", "100000"], "out of range"),
    "resolution not an integer": (lambda i, t: ["--input", i, "--output", t / "o", "--resolution", "1e9"],
                                  "not an integer"),
    "workers 0": (lambda i, t: ["--input", i, "--output", t / "o", "--workers", "0"], "out of range"),
    "sr scale nan": (lambda i, t: ["--input", i, "--output", t / "o", "--sr-min-scale", "nan"], "not a finite"),
    "node rank beyond the nodes": (lambda i, t: ["--input", i, "--output", t / "o", "--num-nodes", "2",
                                                 "--node-rank", "2"], "--node-rank must be in [0, 2)"),
    "unknown split": (lambda i, t: ["--input", i, "--output", t / "o", "--splits", "nosuch"],
                      ("--splits nosuch: no such split under", "(found: dev)")),
    "output folder is a file": (lambda i, t: ["--input", i, "--output", next(i.rglob("*.mp4")) / "o"], "is a file"),
    "output read-only": (lambda i, t: ["--input", i, "--output", Path("/proc/metaportrait-corpus")], "cannot write"),
}


@pytest.mark.parametrize("case", list(PREPROCESS_REFUSED))
def test_preprocess_refuses(case, vox_input, tmp_path, capsys):
    argv, expect = PREPROCESS_REFUSED[case]
    argv = argv(vox_input, tmp_path)
    refused(preprocess.main, [*argv, *PRE[2:]], capsys, expect, [vox_input.parent], [tmp_path / "o"])


def test_preprocess_refuses_a_damaged_record_of_an_earlier_run(vox_input, tmp_path, capsys):
    out = tmp_path / "o"
    assert preprocess.main(_s(["--input", vox_input, "--output", out, *PRE])) == 0
    for name, text in (("manifest.json", '{"format": "metapor'), (".work/settings.json", "\x00\x01")):
        good = (out / name).read_text()
        (out / name).write_text(text)
        refused(preprocess.main, ["--input", vox_input, "--output", out, *PRE], capsys, "is unreadable or damaged",
                [vox_input.parent, out])
        (out / name).write_text(good)


def _clip_record(out: Path, identity: str) -> dict | None:
    manifest = json.loads((out / "manifest.json").read_text())
    return next((m for m in manifest["clips"] if m["identity"] == identity), None)


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def test_preprocess_rejects_a_damaged_clip_unless_kept(corpus, tmp_path):
    from src.preprocess import run

    src = _vox(tmp_path / "in", {"id1": corpus["clip"], "id2": corpus["faststart_truncated"]})
    declared = probe(corpus["faststart_truncated"]).declared_frames
    decoded = _frames(corpus["faststart_truncated"])
    assert 8 <= decoded < declared / 2
    manifest = run(_s(["--input", src, "--output", tmp_path / "o", *PRE]))
    assert [m["identity"] for m in manifest["clips"]] == ["id1"]
    assert [r["reason"] for r in _rejects(tmp_path / "o")] == [
        f"damaged: {decoded} of the {declared} frames its container declares could be decoded"]
    manifest = run(_s(["--input", src, "--output", tmp_path / "k", *PRE, "--keep-damaged"]))
    kept = _clip_record(tmp_path / "k", "id2")
    assert kept["truncated"] is True and kept["frames"] == decoded and kept["declared_frames"] == declared


def test_preprocess_redoes_a_replaced_clip_and_retries_a_fixed_reject(corpus, fixtures_dir, tmp_path):
    from src.preprocess import run

    src = _vox(tmp_path / "in", {"id1": corpus["clip"], "id2": corpus["noface_mp4"]})
    out = tmp_path / "o"
    run(_s(["--input", src, "--output", out, *PRE]))
    assert _clip_record(out, "id2") is None and "no face" in _rejects(out)[0]["reason"]
    first = _clip_record(out, "id1")
    # the face-less file is replaced by a real clip: the cached reject is retried
    other = sorted((fixtures_dir / "voxceleb2_mini" / "dev" / "mp4").glob("*/*/*.mp4"))[0]
    write_video(src / "dev" / "mp4" / "id2" / "v" / "00001.mp4", read_frames(other)[:12], fps=25)
    run(_s(["--input", src, "--output", out, *PRE]))
    assert _clip_record(out, "id2")["frames"] == 12 and _rejects(out) == []
    # id1 replaced at the same path by another clip of another length: redone from the new file
    clip = src / "dev" / "mp4" / "id1" / "v" / "00001.mp4"
    write_video(clip, read_frames(other)[:20], fps=25)
    run(_s(["--input", src, "--output", out, *PRE]))
    now = _clip_record(out, "id1")
    assert first["frames"] == 16 and now["frames"] == 20 and now["input"] == fingerprint(clip)


# ------------------------------------------------------------------------------------------ personalize
def _personalize_argv(c, video, out, *extra) -> list:
    return ["--checkpoint", c["ckpt"], "--video", video, "--output", out, "--batch-size", "2",
            "--max-eval-frames", "4", "--identity-backend", "dlib", *extra]


PERSONALIZE_REFUSED = {
    # argv of (corpus, output), message
    "time budget negative": (lambda c, o: _personalize_argv(c, c["clip"], o, "--time-budget", "-5"), "out of range"),
    "steps 0": (lambda c, o: _personalize_argv(c, c["clip"], o, "--steps", "0"), "out of range"),
    "lr 2": (lambda c, o: _personalize_argv(c, c["clip"], o, "--lr", "2"), "out of range"),
    "image as video": (lambda c, o: _personalize_argv(c, c["portrait"], o), "is an image, not a video"),
    "empty video": (lambda c, o: _personalize_argv(c, c["zero_mp4"], o), "is empty (0 bytes)"),
    "video is a folder": (lambda c, o: _personalize_argv(c, c["root"], o), "is a folder, not a file"),
    "output is the video": (lambda c, o: _personalize_argv(c, c["clip"], c["clip"], "--overwrite"),
                            "overlaps --video"),
    "output not .ckpt": (lambda c, o: _personalize_argv(c, c["clip"], o.with_suffix(".mp4")), "is a .ckpt file"),
    "output folder is a file": (lambda c, o: _personalize_argv(c, c["clip"], c["portrait"] / "p.ckpt"), "is a file"),
    "output read-only": (lambda c, o: _personalize_argv(c, c["clip"], Path("/proc/metaportrait-corpus/p.ckpt")),
                         "cannot write"),
    "checkpoint pickle": (lambda c, o: [*_personalize_argv(c, c["clip"], o), "--checkpoint", c["pickle_ckpt"]],
                          "nothing was run"),
    "checkpoint tensor": (lambda c, o: [*_personalize_argv(c, c["clip"], o), "--checkpoint", c["tensor_ckpt"]],
                          "holds a Tensor"),
    "checkpoint of sr": (lambda c, o: [*_personalize_argv(c, c["clip"], o), "--checkpoint", c["sr_ckpt"]],
                         "is not a generator checkpoint"),
    "video without a face": (lambda c, o: _personalize_argv(c, c["noface_mp4"], o), "no face"),
}


@pytest.mark.parametrize("case", list(PERSONALIZE_REFUSED))
def test_personalize_refuses_and_writes_nothing(case, corpus, tmp_path, capsys):
    out = tmp_path / "new folder" / "p.ckpt"
    argv, expect = PERSONALIZE_REFUSED[case]
    refused(personalize.main, argv(corpus, out), capsys, expect, [corpus["root"]], [out])
    assert list(tmp_path.iterdir()) == []  # no OUT.work, no report, not even the folder it would have made
    assert not corpus["marker"].exists()


def _report(out: Path) -> dict:
    return json.loads(out.with_suffix(".report.json").read_text())


def test_personalize_refuses_a_damaged_resume_state_then_retrains_a_replaced_video(corpus, fixtures_dir, tmp_path,
                                                                                  capsys):
    video, out = tmp_path / "me.mp4", tmp_path / "out" / "me.ckpt"
    shutil.copy(corpus["clip"], video)
    quick = ["--steps", "2", "--eval-every", "2"]
    code, _, err = _call(personalize.main, _personalize_argv(corpus, video, out, *quick), capsys)
    assert code == 0, err
    first = _report(out)
    assert first["train_frames"] + first["heldout_frames"] == 16
    # an interrupted run's resume state, torn: refused with what to do, nothing touched
    ckpt_dir = out.parent / "me.work" / "checkpoints"
    ckpt_dir.mkdir()
    digest = json.loads((out.parent / "me.work" / "shards" / "manifest.json").read_text())["inputs_digest"]
    (ckpt_dir / "data.json").write_text(json.dumps({"inputs_digest": digest}))
    (ckpt_dir / "last.ckpt").write_bytes(corpus["ckpt"].read_bytes()[:3000])
    refused(personalize.main, _personalize_argv(corpus, video, out, *quick, "--overwrite"), capsys, "move it away",
            [out.parent, video])
    shutil.rmtree(ckpt_dir)
    # the video replaced at the same path by a longer clip of someone else: preprocessed and fine-tuned again
    other = sorted((fixtures_dir / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[-1]
    write_video(video, read_frames(other)[:24], fps=25)
    code, _, err = _call(personalize.main, _personalize_argv(corpus, video, out, *quick, "--overwrite"), capsys)
    assert code == 0, err
    second = _report(out)
    assert second["train_frames"] + second["heldout_frames"] == 24


# ------------------------------------------------------------------------------------------ train
TRAIN_FAST = ["model=tiny", "logger=disabled", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
              "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]

TRAIN_REFUSED = {
    # stage, overrides of (corpus, bad shards), message
    "max_epochs -3": ("warp", lambda c, b: ["trainer.max_epochs=-3"], "must be a number >= -1"),
    "refine.init empty": ("refine", lambda c, b: [f"refine.init={c['zero_ckpt']}"], "is empty (0 bytes)"),
    "refine.init truncated": ("refine", lambda c, b: [f"refine.init={c['truncated_ckpt']}"], "truncated or damaged"),
    "refine.init pickle": ("refine", lambda c, b: [f"refine.init={c['pickle_ckpt']}"], "nothing was run"),
    "refine.init missing": ("refine", lambda c, b: [f"refine.init={c['root'] / 'nope.ckpt'}"], "does not exist"),
    "meta.init pickle": ("meta", lambda c, b: [f"meta.init={c['pickle_ckpt']}"], "nothing was run"),
    "meta.init a list": ("meta", lambda c, b: [f"meta.init={c['list_ckpt']}"], "holds a list"),
    "sr.prior pickle": ("sr", lambda c, b: [f"sr.prior={c['pickle_ckpt']}", "sr.lq=bicubic", "sr.window=3"],
                        "nothing was run"),
    "sr.init_base a tensor": ("sr", lambda c, b: [f"sr.init_base={c['tensor_ckpt']}", "sr.window=3"],
                              ("sr.init_base", "holds a Tensor")),
    "vgg19 weights pickle": ("warp", lambda c, b: ["loss.perceptual=vgg19", f"loss.vgg19_weights={c['pickle_ckpt']}"],
                             "nothing was run"),
    "shards index asks for pickle": ("warp", lambda c, b: [f"data.root={b['pickle_index']}"],
                                     "declares fields this project never writes"),
    "shards manifest torn": ("warp", lambda c, b: [f"data.root={b['torn_manifest']}"], "is not valid JSON"),
    "mistyped key": ("warp", lambda c, b: ["trainer.max_epoch=1"], "trainer.max_epoch"),
}


@pytest.mark.parametrize("case", list(TRAIN_REFUSED))
def test_train_refuses(case, corpus, bad_shards, shards, tmp_path, capsys):
    stage, overrides, expect = TRAIN_REFUSED[case]
    argv = [stage, *TRAIN_FAST, f"data.root={shards}", f"output_root={tmp_path / 'runs'}", "run_name=r",
            *overrides(corpus, bad_shards)]
    refused(train.main, argv, capsys, expect, [corpus["root"], bad_shards["pickle_index"], shards])
    assert not corpus["marker"].exists()
    assert not list((tmp_path / "runs").rglob("*.ckpt")) if (tmp_path / "runs").exists() else True


def test_train_refuses_a_damaged_resume_checkpoint_and_keeps_it(shards, tmp_path, capsys):
    argv = ["warp", *TRAIN_FAST, f"data.root={shards}", f"output_root={tmp_path}", "run_name=r"]
    code, _, err = _call(train.main, argv, capsys)
    assert code == 0, err
    last = tmp_path / "warp" / "r" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4000])
    refused(train.main, [*argv, "trainer.max_epochs=2"], capsys, ("last.ckpt", "move it away"), [tmp_path])


# ------------------------------------------------------------------------------------------ upscale
@pytest.fixture()
def frames_64(tmp_path) -> Path:
    """Five 64x64 frames: the input size of the tiny SR model."""
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(folder / f"f{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return folder


def _upscale_argv(c, input, output, *extra) -> list:
    return ["--checkpoint", c["sr_ckpt"], "--input", input, "--output", output, "--device", "cpu", *extra]


def test_upscale_refuses(corpus, frames_64, tmp_path, capsys):
    f, t = frames_64, tmp_path
    keep = [corpus["root"], f]
    refused(upscale.main, _upscale_argv(corpus, f, t / "x.mp4"), capsys, "written as a folder of PNGs", keep,
            [t / "x.mp4"])
    refused(upscale.main, _upscale_argv(corpus, f, f, "--overwrite"), capsys, "overlaps --input", keep)
    refused(upscale.main, _upscale_argv(corpus, f, f / "up"), capsys, "overlaps --input", keep, [f / "up"])
    refused(upscale.main, [*_upscale_argv(corpus, f, t / "up"), "--checkpoint", corpus["pickle_ckpt"]], capsys,
            "nothing was run", keep, [t / "up"])
    refused(upscale.main, [*_upscale_argv(corpus, f, t / "up"), "--checkpoint", corpus["ckpt"]], capsys,
            "not a super-resolution checkpoint", keep, [t / "up"])
    refused(upscale.main, _upscale_argv(corpus, corpus["clip"], t / "up"), capsys, "is a .mp4 file", keep, [t / "up"])
    refused(upscale.main, _upscale_argv(corpus, corpus["random_mp4"], t / "up.mp4"), capsys,
            "is not a readable image or video", keep, [t / "up.mp4"])
    refused(upscale.main, _upscale_argv(corpus, t / "nope", t / "up"), capsys, "does not exist", keep, [t / "up"])
    refused(upscale.main, _upscale_argv(corpus, f, Path("/proc/metaportrait-corpus/up")), capsys, "cannot write", keep)
    refused(upscale.main, _upscale_argv(corpus, corpus["clip"], Path("/proc/metaportrait-corpus/up.mp4")), capsys,
            "cannot write", keep)
    assert not corpus["marker"].exists()
    # two files that would both be written as f0.png; an unreadable frame
    shutil.copy(corpus["portrait"], f / "f0.jpg")
    refused(upscale.main, _upscale_argv(corpus, f, t / "up"), capsys, "share a name", keep, [t / "up"])
    (f / "f0.jpg").unlink()
    shutil.copy(corpus["text_png"], f / "f9.png")
    refused(upscale.main, _upscale_argv(corpus, f, t / "up"), capsys, "cannot read image", keep, [t / "up"])
    (f / "f9.png").unlink()


def test_upscale_into_a_folder_keeps_what_is_there(corpus, frames_64, tmp_path, capsys):
    out = tmp_path / "up"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "f1.png").write_bytes(b"an earlier frame")
    refused(upscale.main, _upscale_argv(corpus, frames_64, out), capsys, "pass --overwrite", [out, frames_64])
    code, _, err = _call(upscale.main, _upscale_argv(corpus, frames_64, out, "--overwrite"), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "f1.png", "f2.png", "f3.png", "f4.png", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine" and cv2.imread(str(out / "f1.png")).shape == (128, 128, 3)


# ------------------------------------------------------------------------------------------ evaluate
def _evaluate_argv(c, data, out, *extra) -> list:
    return ["--checkpoint", c["ckpt"], "--data", data, "--output", out, "--max-frames", "3", "--batch-size", "2",
            "--identity-backend", "dlib", "--quiet", *extra]


def test_evaluate_refuses(corpus, bad_shards, shards, tmp_path, capsys):
    c, t = corpus, tmp_path
    keep = [c["root"], shards, bad_shards["pickle_index"]]
    cases = [
        (_evaluate_argv(c, bad_shards["pickle_index"], t / "e"), "declares fields this project never writes"),
        (_evaluate_argv(c, bad_shards["torn_manifest"], t / "e"), "is not valid JSON"),
        (_evaluate_argv(c, shards, shards / "e"), "overlaps --data"),
        (_evaluate_argv(c, shards, t / "e", "--max-frames", "1"), "out of range"),
        (_evaluate_argv(c, shards, t / "e", "--batch-size", "0"), "out of range"),
        ([*_evaluate_argv(c, shards, t / "e"), "--checkpoint", c["pickle_ckpt"]], "nothing was run"),
        ([*_evaluate_argv(c, shards, t / "e"), "--checkpoint", c["sr_ckpt"]], "is not a generator checkpoint"),
        (_evaluate_argv(c, c["clip"], t / "e"), "is a file, not a folder"),
        (_evaluate_argv(c, shards, t / "e", "--split", "nosuch"), "nosuch"),
        (_evaluate_argv(c, shards, c["portrait"]), "is a file, not a folder"),
        (_evaluate_argv(c, shards, Path("/proc/metaportrait-corpus/e")), "cannot write"),
    ]
    for argv, expect in cases:
        refused(evaluate.main, argv, capsys, expect, keep, [t / "e"])
    assert not c["marker"].exists()


def test_evaluate_keeps_earlier_metrics_without_overwrite(corpus, shards, tmp_path, capsys):
    out = tmp_path / "e"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": true}')
    refused(evaluate.main, _evaluate_argv(corpus, shards, out), capsys, "--overwrite", [out, shards])


# ------------------------------------------------------------------------------------------ kill -9, then again
def _kill_when(module: str, argv: list, ready, timeout: float = 300) -> None:
    """Run `python -m module argv` and kill -9 it as soon as ready(stderr so far) holds (polled every 10 ms); it
    must have been killed, not have finished first."""
    import threading

    proc = subprocess.Popen([sys.executable, "-m", module, *_s(argv)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = bytearray()
    def read():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            err.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + timeout
    while proc.poll() is None and not ready(err.decode(errors="replace")) and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()
    assert proc.wait() == -9, "the run ended before it could be killed"
    reader.join()


def test_killed_preprocessing_keeps_finished_clips_and_completes(preprocess_input, tmp_path):
    from src.preprocess import run

    out = tmp_path / "o"
    argv = ["--input", preprocess_input, "--output", out, "--max-frames-per-clip", "12", "--workers", "1",
            "--identity-backend", "dlib", "--quiet"]
    _kill_when("src.preprocess", argv, lambda _: out.exists() and any((out / ".work").rglob("*.npz")))
    done = {p: p.stat().st_mtime_ns for p in (out / ".work").rglob("*.npz")}
    assert done and not (out / "manifest.json").exists()
    manifest = run(_s(argv))
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # kept, not redone
    assert len(manifest["clips"]) == len(list((out / ".work").rglob("*.npz"))) > len(done)
    assert not _partials(out)


def test_killed_animation_leaves_no_partial_and_runs_again(corpus, fixtures_dir, tmp_path, capsys):
    driving = sorted((fixtures_dir / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]
    argv = _animate_argv(corpus, tmp_path, **{"--driving": driving})
    _kill_when("src.animate", argv, lambda _: bool(_partials(tmp_path)))  # killed while the mp4 is being written
    assert not (tmp_path / "a.mp4").exists()
    code, _, err = _call(animate.main, argv, capsys)
    assert code == 0, err
    assert _frames(tmp_path / "a.mp4") == _frames(driving) and not _partials(tmp_path)


def test_killed_evaluation_writes_nothing_and_runs_again(corpus, shards, tmp_path, capsys):
    out = tmp_path / "e"
    argv = _evaluate_argv(corpus, shards, out)
    # killed once the first clip is evaluated: the metrics are written at the end, each file complete or not at all
    _kill_when("src.evaluate", [a for a in argv if a != "--quiet"], lambda err: "| 1/2 [" in err)
    assert not (out / "metrics.json").exists() and not _partials(out)
    code, _, err = _call(evaluate.main, argv, capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text()) and not _partials(out)


def test_killed_upscaling_leaves_no_partial_and_runs_again(corpus, tmp_path, capsys):
    frames = [cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in read_frames(corpus["clip"])] * 8
    video = write_video(tmp_path / "in.mp4", frames, fps=25)
    out = tmp_path / "out" / "up.mp4"
    out.parent.mkdir()
    argv = _upscale_argv(corpus, video, out)
    _kill_when("src.upscale", argv, lambda _: bool(_partials(out.parent)))  # killed while the mp4 is being written
    assert not out.exists()
    code, _, err = _call(upscale.main, argv, capsys)
    assert code == 0, err
    assert _frames(out) == len(frames) and not _partials(out.parent)
