"""Long driving videos in constant memory: peak RSS and frames/s of `src.animate` for a 30 s and a 5 min driving
video, at 256 and at 512 with SR.

    python -m benchmarks.bench_stream [--short-seconds 30] [--long-seconds 300] [--sr-long-seconds 300]
                                      [--only 256|512_sr]

The driving videos are a real fixture clip (512 px, 25 fps) played forwards and backwards until they last 30 s
and 5 min, with a tone as their audio track. Each animation runs in its own process, which reports its own
peak resident memory (ru_maxrss), so one run's memory cannot hide another's. The generator is the `tiny`
preset's networks at 256 px and the SR net the `tiny` preset's at 256 -> 512, both untrained (speed and memory
do not depend on the weights); the pipeline around them (two decoding passes with face detection and
MediaPipe, generation in batches of 8, SR windows, paste-free encoding with audio) is the real one.
frames/s is end to end: the output frames over the whole run's wall time, landmark passes included.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import FIXTURES, save, untrained_generator

FPS = 25


def looped_video(clip: Path, seconds: float, out: Path) -> Path:
    """`clip` forwards and backwards until `seconds` long, with a 220 Hz tone; written one frame at a time."""
    from src.video_io import read_frames, write_video

    frames = read_frames(clip)
    cycle = np.concatenate([np.arange(len(frames)), np.arange(len(frames) - 2, 0, -1)])
    n = int(seconds * FPS)
    rate = 16000

    def tone():
        for start in range(0, int(seconds * rate), rate):
            t = np.arange(start, min(start + rate, int(seconds * rate))) / rate
            yield (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)

    return write_video(out, (frames[cycle[i % len(cycle)]] for i in range(n)), fps=FPS, audio=tone(),
                       sample_rate=rate)


def checkpoints(folder: Path) -> tuple[Path, Path]:
    """An untrained 256-px generator and a 256 -> 512 SR net, as checkpoints src.animate reads."""
    from omegaconf import OmegaConf

    from src.checkpoints import SR_NET, save_checkpoint
    from src.config import compose
    from src.models.temporal_sr import build_sr

    gen = untrained_generator(folder / "gen256.ckpt", ["model=tiny", "model.resolution=256"])
    sr_cfg = OmegaConf.to_container(compose("sr", ["model=tiny", "model.resolution=256", "model.sr.out_size=512"]),
                                    resolve=True)
    net = build_sr(OmegaConf.create(sr_cfg["model"]))
    sr = save_checkpoint({"state_dict": {SR_NET + k: v for k, v in net.state_dict().items()},
                          "hyper_parameters": {"cfg": sr_cfg}}, folder / "sr512.ckpt")
    return gen, sr


def one_run(a) -> None:
    """In the child process: one animation, then its peak RSS and timing as JSON on the last line."""
    from src.inference import animate

    t0 = time.time()
    summary = animate(Path(a.generator), Path(a.driving_source), Path(a.driving), Path(a.output),
                      Path(a.sr) if a.sr else None, overwrite=True, progress=False, identity_backend="dlib")
    seconds = time.time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"frames": summary["frames"], "size": summary["size"], "seconds": round(seconds, 1),
                      "frames_per_s": round(summary["frames"] / seconds, 2), "peak_rss_mb": round(peak_mb)}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short-seconds", type=float, default=30)
    p.add_argument("--long-seconds", type=float, default=300)
    p.add_argument("--sr-long-seconds", type=float, default=None,
                   help="the long video's length for the SR run (default: --long-seconds); at about 2 frames/s on "
                        "2 CPU cores, 5 min with SR takes an hour")
    p.add_argument("--only", choices=("256", "512_sr"), default=None,
                   help="run only the 256 px or only the 512 px with SR pair of lengths")
    p.add_argument("--run", nargs=5, metavar=("GEN", "SR", "SOURCE", "DRIVING", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.run:
        a.generator, a.sr, a.driving_source, a.driving, a.output = a.run
        a.sr = None if a.sr == "-" else a.sr
        return one_run(a)
    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    clip = next(c for c in sorted((FIXTURES / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4")))
    portrait = FIXTURES / "portraits" / "portrait_a.jpg"
    gen, sr = checkpoints(tmp)
    sr_long = a.sr_long_seconds or a.long_seconds
    result = {"command": "python -m benchmarks.bench_stream " + " ".join(argv if argv is not None else sys.argv[1:]),
              "driving_clip": clip.name, "models": "tiny networks, untrained: generator 256 px, SR 256 -> 512"}
    lengths = {"256": (a.short_seconds, a.long_seconds), "512_sr": (a.short_seconds, sr_long)}
    if a.only:
        lengths = {a.only: lengths[a.only]}
    for seconds in sorted({s for pair in lengths.values() for s in pair}):
        video = looped_video(clip, seconds, tmp / f"driving_{seconds:.0f}s.mp4")
        for name, sr_ckpt in (("256", "-"), ("512_sr", str(sr))):
            if seconds not in lengths.get(name, ()):
                continue
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_stream", "--run", str(gen), sr_ckpt,
                                  str(portrait), str(video), str(tmp / "out.mp4")], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"bench_stream: the {name} run on {video.name} failed:\n{out.stderr[-2000:]}")
            result[f"{name}_{seconds:.0f}s"] = json.loads(out.stdout.strip().splitlines()[-1])
            print(name, seconds, result[f"{name}_{seconds:.0f}s"], flush=True)
        video.unlink()
    for name, (short_s, long_s) in lengths.items():
        short, long = result[f"{name}_{short_s:.0f}s"], result[f"{name}_{long_s:.0f}s"]
        result[f"{name}_peak_rss_long_over_short"] = round(long["peak_rss_mb"] / short["peak_rss_mb"], 3)
    save("stream" if a.only is None else f"stream_{a.only}", result)


if __name__ == "__main__":
    main()
