"""The web app: animate a portrait and personalize a model in the browser, on the shared inference code.

    python -m src.app [--checkpoint CKPT] [--sr-checkpoint CKPT] [--host 127.0.0.1] [--port 7860]
                      [--device auto] [--outputs outputs] [--max-upload-mb 200] [--share]

A Gradio Blocks page with two tabs. Animate: a portrait (image or video) and a driving video in, an mp4 with
the driving audio out, with every control of `python -m src.animate` (the same `src.inference.animate` runs
it). Personalize: a video of a person in, a fine-tuned checkpoint out (the same `src.personalization`), with
live progress and the before/after report; the new model joins the model picker.

The model picker lists the finished checkpoints under --outputs (from their runs' stages.json and the
personalize reports) with their stage, preset and resolution; the default is the newest personalized or meta
model. A path can be typed in, but only inside --outputs (or the checkpoints given on the command line).

Jobs run one at a time on the device, through Gradio's queue (the page shows the queue position). Results live
in a temporary folder per browser session, removed when the session ends; uploads in Gradio's cache beside it
(files older than an hour are cleared every hour); both go when the server stops. Personalized checkpoints are
kept under --outputs/personalized/.

Security defaults: the server binds to 127.0.0.1 (--host 0.0.0.0 warns); no public share link unless --share;
uploads are capped at --max-upload-mb and checked by their content, not their name; checkpoints are read from
the local disk with weights_only=True, so nothing in them runs.
"""
# no `from __future__ import annotations`: Gradio reads the handlers' gr.Request hints as live objects
import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from src.arguments import Parser, positive_int
from src.errors import UserError, cli_entry

DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 200
LOOPBACK = "127.0.0.1"


class Cancelled(Exception):
    """The user pressed Cancel: the job stops at its next step and nothing it made is kept."""


@dataclass
class AppSettings:
    outputs: Path = Path("outputs")
    checkpoint: Path | None = None
    sr_checkpoint: Path | None = None
    device: str = "auto"
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    samples: Path = Path("data/sample")
    workdir: Path | None = None  # the sessions' folders; None: a new temporary folder

    def __post_init__(self):
        self.outputs, self.samples = Path(self.outputs), Path(self.samples)
        for flag, path in (("--checkpoint", self.checkpoint), ("--sr-checkpoint", self.sr_checkpoint)):
            if path is not None and not Path(path).is_file():
                raise UserError(f"{flag} {path} does not exist")
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="metaportrait_app_"))


# ------------------------------------------------------------------------------------------ checks
def allowed_checkpoint(text: str | None, settings: AppSettings, what: str) -> Path:
    """The checkpoint file a picker names, if it lies inside --outputs or is one given on the command line;
    a UserError otherwise (no path typed into the page reads outside the allowed folders)."""
    if not text or not str(text).strip():
        raise UserError(f"no {what} chosen: pick one, or run `make demo` to train one")
    path = Path(str(text).split(" · ")[-1].strip()).expanduser()
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    given = {Path(p).resolve() for p in (settings.checkpoint, settings.sr_checkpoint) if p is not None}
    if path not in given and not path.is_relative_to(settings.outputs.resolve()):
        raise UserError(f"{what} {text}: only checkpoints inside {settings.outputs}/ (or given with --checkpoint / "
                        "--sr-checkpoint) can be used")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    return path


def checked_upload(path: str | None, kind: str, what: str) -> Path:
    """An uploaded file that is, by its content, of `kind` (image, video or picture: either); the message names
    the upload by its own name, not by the server's copy of it."""
    from src.paths import kind_mismatch

    if not path or not Path(path).is_file():
        raise UserError(f"no {what} uploaded")
    why = kind_mismatch(Path(path), kind)
    if why:
        raise UserError(f"the {what} ({Path(path).name}) is {why}")
    return Path(path)


def session_key(request) -> str:
    """The browser session a request comes from (Gradio's session hash), as a folder-safe name."""
    key = "".join(c for c in str(getattr(request, "session_hash", None) or "") if c.isalnum())[:64]
    return key or "anonymous"


def session_folder(settings: AppSettings, request) -> Path:
    """This browser session's folder for uploads and results."""
    folder = settings.workdir / session_key(request)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"


# ------------------------------------------------------------------------------------------ jobs
def animate_job(settings: AppSettings, session: Path, source: str | None, driving: str | None, generator: str,
                use_sr: bool, sr: str | None, motion: str, paste: bool, smooth: int, motion_parts: str,
                expression_scale: float, eyes: str, lips: str, lip_scale: float, face: str,
                video_to_video: bool, colour_match: bool) -> tuple[Path, dict]:
    """Checks everything, then src.inference.animate into the session folder: (the mp4, the summary)."""
    from src.inference import animate  # it checks the controls first (src/controls.py), as the CLI does

    smooth = int(smooth) if smooth and int(smooth) > 1 else None  # the slider's 1 is off
    face = str(face).strip() or "largest"
    source_path = checked_upload(source, "video" if video_to_video else "picture", "portrait")
    driving_path = checked_upload(driving, "video", "driving video")
    checkpoint = allowed_checkpoint(generator, settings, "generator checkpoint")
    sr_checkpoint = allowed_checkpoint(sr, settings, "SR checkpoint") if use_sr else None
    output = session / f"animation-{_stamp()}.mp4"
    summary = animate(checkpoint, source_path, driving_path, output, sr_checkpoint, motion, bool(paste),
                      device=settings.device, progress=True, smooth=smooth, motion_parts=motion_parts,
                      expression_scale=float(expression_scale), eyes=eyes, lips=lips, lip_scale=float(lip_scale),
                      face=face, video_to_video=bool(video_to_video), colour_match=bool(colour_match))
    return output, summary


def progress_callback(report, cancel, steps: int):
    """A Lightning callback that tells the page where fine-tuning is (step, held-out loss, ETA) through
    `report(fraction, text)`, and stops the run with Cancelled once `cancel` is set."""
    from lightning.pytorch.callbacks import Callback

    class ProgressReport(Callback):
        def __init__(self):
            self.t0, self.loss = None, None

        def on_train_batch_end(self, trainer, *args):
            if cancel.is_set():
                raise Cancelled()
            self.t0 = self.t0 or time.time()
            step = trainer.global_step
            eta = (time.time() - self.t0) / max(step, 1) * (steps - step)
            loss = "" if self.loss is None else f", held-out loss {self.loss:.4f}"
            report(step / steps, f"step {step}/{steps}{loss}, ETA {eta:.0f} s")

        def on_validation_end(self, trainer, *args):
            value = trainer.callback_metrics.get("val/loss")
            self.loss = None if value is None else float(value)

    return ProgressReport()


CANCEL_GRACE_S = 10  # a cancelled job that has not stopped by itself after this long (preprocessing) is ended


def _personalize_worker(options: dict, messages, cancel) -> None:
    """The job's own process: personalize, its progress and its end sent back as messages. A process of its own
    because preprocessing (litdata) installs signal handlers, which only a main thread may, and because a job
    that runs out of memory must not take the server down with it."""
    from src.personalization import PersonalizeOptions, personalize

    os.setpgrp()  # its own process group: ending the job ends the preprocessing workers it starts as well

    def report(fraction, text):
        messages.put(("progress", fraction, text))

    try:
        result = personalize(PersonalizeOptions(**options),
                             callbacks=[progress_callback(report, cancel, options["steps"])])
        messages.put(("done", result))
    except UserError as exc:
        messages.put(("error", str(exc)))
    except Cancelled:
        messages.put(("cancelled",))
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        messages.put(("failed", f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"))


def personalize_job(settings: AppSettings, video: str | None, generator: str, steps: int,
                    time_budget: float | None, report, cancel) -> tuple[dict, Path, Path]:
    """src.personalization.personalize on an uploaded video into --outputs/personalized/, in a process of its
    own: (the report, the checkpoint, the preview mp4). `report(fraction, text)` hears the progress; `cancel`
    (a multiprocessing Event from new_cancel_event) stops it. Cancelled or failed, nothing of it is left."""
    import multiprocessing as mp
    import queue

    from src.personalization import output_paths

    video_path = checked_upload(video, "video", "video of the person")
    checkpoint = allowed_checkpoint(generator, settings, "generator checkpoint")
    steps = int(steps)
    if steps < 1:
        raise UserError("steps must be at least 1")
    budget = float(time_budget) if time_budget else None
    if budget is not None and budget <= 0:
        raise UserError("the time budget must be positive seconds (0 for none)")
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in video_path.stem)[:40] or "person"
    output = settings.outputs / "personalized" / f"{stem}-{_stamp()}.ckpt"
    paths = output_paths(output)
    options = dict(checkpoint=checkpoint, videos=[video_path], output=output, steps=steps, time_budget=budget,
                   device=settings.device)
    report(0.0, "starting: preprocessing the video (face crop, landmarks, identity)")
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    # not a daemon: preprocessing starts worker processes of its own
    worker = ctx.Process(target=_personalize_worker, args=(options, messages, cancel))
    worker.start()
    end, cancelled_at = None, None
    try:
        while end is None:
            try:
                message = messages.get(timeout=0.5)
            except queue.Empty:
                if cancel.is_set():
                    cancelled_at = cancelled_at or time.time()
                    if time.time() - cancelled_at > CANCEL_GRACE_S:
                        os.killpg(worker.pid, signal.SIGTERM)
                        end = ("cancelled",)
                if end is None and not worker.is_alive():
                    end = ("failed", f"the job's process ended unexpectedly (exit code {worker.exitcode})")
                continue
            if message[0] == "progress":
                report(message[1], message[2])
            else:
                end = message
    finally:
        if end is None:
            cancel.set()  # the page went away mid-job: the job stops at its next step
        # a job that has reported its end exits by itself, taking its data-loader workers with it; one that does
        # not (stuck in preprocessing, or the page went away) is ended
        worker.join(timeout=30)
        if worker.is_alive():
            worker.terminate()
            worker.join(timeout=30)
        try:
            os.killpg(worker.pid, signal.SIGKILL)  # whatever of its group is left (litdata's workers)
        except (ProcessLookupError, PermissionError):
            pass
        _remove(paths["work"])  # each app job writes a new name: nothing would reuse it
        if end is None or end[0] != "done":  # cancelled or failed: nothing of it is kept
            for key in ("checkpoint", "report", "preview"):
                paths[key].unlink(missing_ok=True)
    if end[0] == "error":
        raise UserError(end[1])
    if end[0] == "cancelled":
        raise Cancelled()
    if end[0] == "failed":
        raise RuntimeError(end[1])
    return end[1], paths["checkpoint"], paths["preview"]


def _remove(folder: Path, tries: int = 20) -> None:
    """Remove `folder`, trying again while something that has not yet exited still writes into it."""
    for _ in range(tries):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.5)


def new_cancel_event():
    """The cancel flag a personalize job's process can see."""
    import multiprocessing as mp

    return mp.get_context("spawn").Event()


def report_table(report: dict) -> str:
    """The before/after held-out numbers as a Markdown table."""
    before, after = report["heldout"]["before"], report["heldout"]["after"]
    rows = [f"| {k} | {before[k]:.4f} | {after[k]:.4f} |" for k in before
            if isinstance(before.get(k), (int, float)) and isinstance(after.get(k), (int, float))]
    return "\n".join([f"**{report['steps']} steps** ({report['stopped_by']}), {report['seconds']['total']} s",
                      "", "| held-out | before | after |", "|---|---|---|", *rows])


# ------------------------------------------------------------------------------------------ the page
def _friendly(fn):
    """Run a page handler; bad input and cancellation come back as a readable message in the page (gr.Error),
    an unexpected fault as one line (its traceback goes to the server's log), and the server keeps serving."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Cancelled:
            raise gr.Error("cancelled: nothing of this job was kept", print_exception=False) from None
        except gr.Error:
            raise
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            first_line = (str(exc).splitlines() or [""])[0][:200]
            raise gr.Error(f"the job failed ({type(exc).__name__}: {first_line}); the server log has the details",
                           print_exception=False) from None

    return wrapper


def _choices(models, kind: str) -> list[tuple[str, str]]:
    return [(m.label, str(m.path)) for m in models if m.kind == kind]


def _examples(samples: Path) -> list[list[str]]:
    """(portrait, driving) pairs from the sample dataset's test clips (`make sample`): a clip's first frame is the
    portrait, another clip drives it."""
    clips = sorted(samples.glob("test/mp4/*/*/*.mp4"))
    return [[str(a), str(b)] for a, b in zip(clips, clips[1:] + clips[:1])][:3] if len(clips) > 1 else []


def build_app(settings: AppSettings):
    """The Gradio Blocks page (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from src.catalog import default_generator, describe, find_models
    from src.faces.motion import EYES_CHOICES, LIPS_CHOICES, MODES, PARTS

    cancels: dict = {}  # session -> the cancel flag of its personalize job

    def models():
        found = find_models(settings.outputs)
        given = []  # the checkpoints named on the command line come first
        for path, stage in ((settings.checkpoint, "given"), (settings.sr_checkpoint, "sr")):
            if path is not None:
                m = describe(Path(path).resolve(), stage, Path(path).stat().st_mtime)
                if m is not None:
                    given.append(m)
        return given + [m for m in found if m.path not in {g.path for g in given}]

    def picker_state():
        found = models()
        gens, srs = _choices(found, "generator"), _choices(found, "sr")
        default = default_generator(found)
        first = (str(Path(settings.checkpoint).resolve()) if settings.checkpoint
                 else (str(default.path) if default else None))
        first_sr = (str(Path(settings.sr_checkpoint).resolve()) if settings.sr_checkpoint
                    else (srs[0][1] if srs else None))
        note = ("" if gens else f"No generator checkpoint under `{settings.outputs}/` yet. Run `make demo` (about "
                "15 minutes on 2 CPU cores) to train one, or start the app with `--checkpoint CKPT`.")
        return gens, first, srs, first_sr, note

    gens, first, srs, first_sr, note = picker_state()
    with gr.Blocks(title="MetaPortrait: animate and personalize", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# MetaPortrait\nAnimate a portrait with a driving video, or personalize a model to a person.")
        with gr.Row():
            generator = gr.Dropdown(gens, value=first, label="generator checkpoint", allow_custom_value=True,
                                    scale=4, elem_id="generator")
            sr = gr.Dropdown(srs, value=first_sr, label="super-resolution checkpoint", allow_custom_value=True,
                             scale=3)
            refresh = gr.Button("refresh", scale=1)
        no_model = gr.Markdown(note, visible=bool(note))

        with gr.Tab("Animate"):
            with gr.Row():
                source = gr.File(label="portrait (image, or video)", file_types=["image", "video"], type="filepath",
                                 elem_id="source")
                driving = gr.File(label="driving video", file_types=["video"], type="filepath", elem_id="driving")
            with gr.Accordion("controls", open=False):
                with gr.Row():
                    motion = gr.Radio(list(MODES), value="relative", label="motion")
                    parts = gr.Radio(list(PARTS), value="both", label="motion parts (pose / expression)")
                    face = gr.Textbox("largest", label="face: largest, all, or a number from the left")
                with gr.Row():
                    expression_scale = gr.Slider(0, 3, value=1, step=0.05, label="expression scale")
                    eyes = gr.Dropdown(list(EYES_CHOICES), value="driving", label="eyes")
                    lips = gr.Dropdown(list(LIPS_CHOICES), value="driving", label="lips")
                    lip_scale = gr.Slider(0, 3, value=1, step=0.05, label="lip scale")
                with gr.Row():
                    smooth = gr.Slider(1, 31, value=1, step=2, label="smoothing window (odd frames; 1 = off)")
                    paste = gr.Checkbox(False, label="paste back into the picture")
                    colour = gr.Checkbox(True, label="colour match when pasting")
                    v2v = gr.Checkbox(False, label="video to video (the portrait is a video)")
                    use_sr = gr.Checkbox(False, label="super-resolution")
            run = gr.Button("Animate", variant="primary", elem_id="animate")
            with gr.Row():
                result = gr.Video(label="result", elem_id="result", interactive=False)
                with gr.Column():
                    download = gr.File(label="download")
                    summary = gr.JSON(label="summary")
            if _examples(settings.samples):
                gr.Examples(_examples(settings.samples), inputs=[source, driving], label="sample clips")

        with gr.Tab("Personalize"):
            person = gr.File(label="video of the person", file_types=["video"], type="filepath")
            with gr.Row():
                steps = gr.Number(300, label="steps", precision=0, minimum=1)
                budget = gr.Number(0, label="time budget (s, 0 = none)", minimum=0)
            with gr.Row():
                go = gr.Button("Personalize", variant="primary")
                stop = gr.Button("Cancel", variant="stop")
            table = gr.Markdown()
            with gr.Row():
                preview = gr.Video(label="held-out frames: real | before | after", interactive=False)
                report_json = gr.JSON(label="report")
                new_ckpt = gr.Textbox(label="new checkpoint", interactive=False)

        def on_refresh():
            gens, first, srs, first_sr, note = picker_state()
            return (gr.Dropdown(choices=gens, value=first), gr.Dropdown(choices=srs, value=first_sr),
                    gr.Markdown(note, visible=bool(note)))

        @_friendly
        def on_animate(source, driving, generator, use_sr, sr, motion, paste, smooth, parts, expression_scale,
                       eyes, lips, lip_scale, face, v2v, colour, request: gr.Request,
                       progress=gr.Progress(track_tqdm=True)):
            output, summary = animate_job(settings, session_folder(settings, request), source, driving, generator,
                                          use_sr, sr, motion, paste, smooth, parts, expression_scale, eyes, lips,
                                          lip_scale, face, v2v, colour)
            for key, what in (("driving_frames_face_lost", "driving"), ("source_frames_face_lost", "source")):
                if summary.get(key):
                    gr.Warning(f"the face was lost on {summary[key]} {what} frames; the last good frame was held")
            if summary.get("driving_truncated"):
                gr.Warning("the driving video is damaged: it decodes to fewer frames than it declares")
            return str(output), str(output), {k: v for k, v in summary.items() if k != "output"}  # no server paths

        @_friendly
        def on_personalize(video, generator, steps, budget, request: gr.Request, progress=gr.Progress()):
            cancel = cancels[session_key(request)] = new_cancel_event()
            report, ckpt, preview_path = personalize_job(settings, video, generator, steps, budget,
                                                         lambda f, desc: progress(f, desc=desc), cancel)
            shown = session_folder(settings, request) / f"preview-{_stamp()}.mp4"
            if preview_path.is_file():
                shutil.copyfile(preview_path, shown)
            gens = picker_state()[0]
            return (report_table(report), str(shown) if shown.is_file() else None, report, str(ckpt),
                    gr.Dropdown(choices=gens, value=str(ckpt.resolve())))

        def on_cancel(request: gr.Request):
            cancel = cancels.get(session_key(request))
            if cancel is None:
                gr.Info("no personalization job is running")
                return
            cancel.set()
            gr.Info("cancelling: the job stops at its next step")

        def on_unload(request: gr.Request):
            if session_key(request) in cancels:
                cancels[session_key(request)].set()
            shutil.rmtree(session_folder(settings, request), ignore_errors=True)

        refresh.click(on_refresh, outputs=[generator, sr, no_model], queue=False, api_name="refresh")
        run.click(on_animate, [source, driving, generator, use_sr, sr, motion, paste, smooth, parts,
                               expression_scale, eyes, lips, lip_scale, face, v2v, colour],
                  [result, download, summary], api_name="animate", concurrency_id="device", concurrency_limit=1)
        go.click(on_personalize, [person, generator, steps, budget], [table, preview, report_json, new_ckpt, generator],
                 api_name="personalize", concurrency_id="device", concurrency_limit=1)
        stop.click(on_cancel, queue=False, api_name="cancel")
        app.unload(on_unload)
    app.queue(default_concurrency_limit=1)
    return app


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv=None) -> argparse.Namespace:
    d = AppSettings.__dataclass_fields__
    p = Parser(prog="python -m src.app", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--checkpoint", type=Path, help="a generator checkpoint to offer first (default: the newest "
                   "personalized or meta checkpoint under --outputs)")
    p.add_argument("--sr-checkpoint", type=Path, help="a super-resolution checkpoint to offer first")
    p.add_argument("--outputs", type=Path, default=d["outputs"].default,
                   help="where checkpoints are found and personalized ones written (default %(default)s)")
    p.add_argument("--samples", type=Path, default=d["samples"].default,
                   help="the sample dataset the examples come from (make sample; default %(default)s)")
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help="port (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--max-upload-mb", type=positive_int, default=DEFAULT_MAX_UPLOAD_MB,
                   help="largest upload accepted, in MB (default %(default)s)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> int:
    a = parse_args(argv)
    from src.inference import resolve_device

    if a.host not in (LOOPBACK, "localhost", "::1"):
        print(f"warning: --host {a.host} serves the app to every machine that can reach this one; anyone there can "
              "run jobs on it and upload files", file=sys.stderr)
    if a.share:
        print("warning: --share opens a public link to this app through gradio.live", file=sys.stderr)
    resolve_device(a.device)  # a missing CUDA is an error now, not at the first job
    settings = AppSettings(a.outputs, a.checkpoint, a.sr_checkpoint, a.device, a.max_upload_mb, a.samples)
    # Gradio's upload cache inside the same folder (unless GRADIO_TEMP_DIR says otherwise), so stopping the
    # server removes the uploads too; set before gradio is imported, which reads it then
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.workdir / "uploads"))
    app = build_app(settings)
    print(f"session files go to {settings.workdir}; removed when the server stops", flush=True)

    def stop(*_):  # SIGTERM ends the server as Ctrl-C does, so the session files are removed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        app.launch(server_name=a.host, server_port=a.port, share=a.share, max_file_size=f"{a.max_upload_mb}mb",
                   allowed_paths=[str(settings.workdir)], show_error=True, ssr_mode=False, quiet=False)
    finally:
        shutil.rmtree(settings.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
