"""python -m src.export and src.animate --runtime onnx: ONNX graphs of real checkpoints, run with onnxruntime on
real fixture faces and compared with torch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from src import animate, export
from src.video_io import probe, read_audio, read_frames


@pytest.fixture(scope="module")
def clips(fixtures_dir):
    return sorted((fixtures_dir / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))


@pytest.fixture(scope="module")
def sr_ckpt(tmp_path_factory):
    """An untrained tiny SR net, 64 -> 128 px (the tiny generator's frames)."""
    from omegaconf import OmegaConf

    from src.checkpoints import SR_NET, save_checkpoint
    from src.config import compose
    from src.models.temporal_sr import build_sr

    cfg = OmegaConf.to_container(compose("sr", ["model=tiny", "model.sr.out_size=128"]), resolve=True)
    net = build_sr(OmegaConf.create(cfg["model"]))
    return save_checkpoint({"state_dict": {SR_NET + k: v for k, v in net.state_dict().items()},
                            "hyper_parameters": {"cfg": cfg}}, tmp_path_factory.mktemp("sr") / "sr.ckpt")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, tiny_generator_ckpt, sr_ckpt, clips):
    folder = tmp_path_factory.mktemp("onnx") / "graphs"
    manifest = export.export(tiny_generator_ckpt, folder, sr_ckpt, batch_size=4, check_source=clips[0],
                             check_driving=clips[1], identity_backend="dlib")
    return folder, manifest


def test_export_writes_graphs_that_match_torch_on_real_frames(graphs):
    folder, manifest = graphs
    assert {p.name for p in folder.iterdir()} == {"source.onnx", "frame.onnx", "sr.onnx", "manifest.json"}
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    diffs = manifest["check"]["max_abs_diff"]
    assert set(diffs) == {"frame.onnx", "sr.onnx"}
    assert all(0 <= d < export.DEFAULT_TOLERANCE for d in diffs.values()), diffs
    assert manifest["check"]["animated_frames_max_uint8_diff"] <= 2  # float rounding on the uint8 frames
    assert manifest["batch"] == 4 and manifest["resolution"] == 64 and manifest["mesh_prior"] is True


def _animate(capsys, *args):
    code = animate.main([*map(str, args), "--quiet", "--identity-backend", "dlib"])
    out, err = capsys.readouterr()
    return code, (json.loads(out[out.index('{\n "output"'):]) if code == 0 else None), err


def test_animate_with_onnx_runtime_writes_the_same_video_as_torch(graphs, tiny_generator_ckpt, sr_ckpt, clips,
                                                                  fixtures_dir, tmp_path, capsys):
    folder, _ = graphs
    portrait = fixtures_dir / "portraits" / "portrait_a.jpg"
    common = ["--checkpoint", tiny_generator_ckpt, "--sr-checkpoint", sr_ckpt, "--source", portrait,
              "--driving", clips[1]]
    code, onnx, err = _animate(capsys, *common, "--output", tmp_path / "onnx.mp4", "--runtime", "onnx",
                               "--onnx", folder)
    assert code == 0, err
    code, torch_run, err = _animate(capsys, *common, "--output", tmp_path / "torch.mp4", "--batch-size", "4",
                                    "--precision", "fp32")
    assert code == 0, err
    assert onnx["runtime"] == "onnx" and torch_run["runtime"] == "torch"
    a, b = probe(tmp_path / "onnx.mp4"), probe(tmp_path / "torch.mp4")
    assert a.frames == b.frames == probe(clips[1]).frames and (a.width, a.height) == (128, 128)
    assert read_audio(tmp_path / "onnx.mp4") is not None
    fa, fb = read_frames(tmp_path / "onnx.mp4"), read_frames(tmp_path / "torch.mp4")
    # the frames differ by at most 1 grey level before encoding (test above); H.264 then makes its own choices
    mse = ((fa.astype(float) - fb.astype(float)) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 38, mse


def test_onnx_runtime_exports_on_the_fly_without_a_graph_folder(tiny_generator_ckpt, clips, fixtures_dir, tmp_path,
                                                                capsys):
    code, summary, err = _animate(capsys, "--checkpoint", tiny_generator_ckpt, "--source",
                                  fixtures_dir / "portraits" / "portrait_b.jpg", "--driving", clips[0],
                                  "--output", tmp_path / "o.mp4", "--runtime", "onnx")
    assert code == 0, err
    assert summary["frames"] == probe(clips[0]).frames and summary["runtime"] == "onnx"
    # video-to-video: every frame brings its own source pyramid into the graph
    code, summary, err = _animate(capsys, "--checkpoint", tiny_generator_ckpt, "--source", clips[1], "--driving",
                                  clips[0], "--output", tmp_path / "v.mp4", "--runtime", "onnx", "--video-to-video",
                                  "--batch-size", "3")
    assert code == 0, err
    assert summary["video_to_video"] and summary["frames"] == min(probe(clips[0]).frames, probe(clips[1]).frames)


def test_graphs_of_another_checkpoint_and_misused_flags_are_refused(graphs, tiny_generator_ckpt, clips, fixtures_dir,
                                                                     tmp_path, capsys, monkeypatch):
    from benchmarks.common import untrained_generator

    folder, _ = graphs
    other = untrained_generator(tmp_path / "other.ckpt", ["model=tiny", "model.warp.code_dim=32"])
    portrait = fixtures_dir / "portraits" / "portrait_a.jpg"
    code, _, err = _animate(capsys, "--checkpoint", other, "--source", portrait, "--driving", clips[0],
                            "--output", tmp_path / "x.mp4", "--runtime", "onnx", "--onnx", folder)
    assert code == 2 and "holds graphs of refine.ckpt" in err and "src.export" in err
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(SystemExit) as exc:  # refused at parsing
        animate.parse_args(["--checkpoint", str(tiny_generator_ckpt), "--source", str(portrait), "--driving",
                            str(clips[0]), "--output", str(tmp_path / "y.mp4"), "--onnx", str(folder)])
    assert exc.value.code == 2
    assert "--runtime onnx" in capsys.readouterr().err
    # graphs that fail their check are left without the manifest, so animate refuses them
    code = export.main(["--checkpoint", str(tiny_generator_ckpt), "--output", str(tmp_path / "strict"),
                        "--check-source", str(clips[0]), "--check-driving", str(clips[1]), "--identity-backend", "dlib",
                        "--tolerance", "1e-12"])
    err = capsys.readouterr().err
    assert code == 2 and "differs from torch" in err and (tmp_path / "strict" / "frame.onnx").is_file()
    assert not (tmp_path / "strict" / "manifest.json").exists()
    # the check needs real faces: without the sample dataset or --check-*, a clear error
    monkeypatch.chdir(tmp_path)  # no data/sample here
    code = export.main(["--checkpoint", str(tiny_generator_ckpt), "--output", str(tmp_path / "g")])
    assert code == 2 and "make sample" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_a_generator_without_the_mesh_prior_exports_too(tmp_path):
    """Checkpoints of the paper's learned-only warp have no mesh-flow input; their graphs match torch as well."""
    import torch

    from benchmarks.common import untrained_generator
    from src.checkpoints import load_generator
    from src.runtime import OnnxGenerator, export_graphs, frame_example

    ckpt = untrained_generator(tmp_path / "g.ckpt", ["model=tiny", "model.warp.mesh_prior=false",
                                                      "model.refiner.blend_warped=false"])
    generator, _, _ = load_generator(ckpt)
    manifest = export_graphs(generator, tmp_path / "graphs", 2, ckpt)
    onnx = OnnxGenerator(tmp_path / "graphs", ckpt)
    x = frame_example(generator, 2)
    assert manifest["mesh_prior"] is False and "mesh_flow" not in x and not onnx.mesh_prior
    with torch.no_grad():
        ours = onnx(**x, source_feats=onnx.source_features(x["source"][:1]))["output"]
        theirs = generator(**x, source_feats=generator.source_features(x["source"][:1]))["output"]
    assert ours.shape == theirs.shape == (2, 3, 64, 64)
    assert (ours - theirs).abs().max() < export.DEFAULT_TOLERANCE
