"""Identity embeddings of a face: InsightFace ArcFace (512-D) when its model pack is available, dlib's
ResNet (128-D, from the face_recognition_models package, offline) otherwise.

`auto` uses ArcFace if the pack is on disk or can be downloaded (what a machine with internet gets
automatically), and says so when it falls back to dlib. The backend and its dimension are recorded with
the data, and embeddings of different backends are never mixed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from src.errors import UserError
from src.faces.align import aligned_face

log = logging.getLogger(__name__)
BACKENDS = ("auto", "insightface", "dlib")
INSIGHTFACE_PACK = "buffalo_l"
INSIGHTFACE_MODEL = "w600k_r50.onnx"


def insightface_root() -> Path:
    return Path(os.environ.get("INSIGHTFACE_HOME", Path.home() / ".insightface"))


class ArcFaceEmbedder:
    name, dim = "insightface-arcface", 512

    def __init__(self, model_file: str | Path):
        from insightface.model_zoo import get_model

        self.model = get_model(str(model_file), providers=["CPUExecutionProvider"])
        self.model.prepare(ctx_id=-1)

    @classmethod
    def locate(cls, download: bool) -> Path:
        path = insightface_root() / "models" / INSIGHTFACE_PACK / INSIGHTFACE_MODEL
        if not path.is_file() and download:
            from insightface.utils.storage import ensure_available

            ensure_available("models", INSIGHTFACE_PACK, root=str(insightface_root()))
        if not path.is_file():
            raise FileNotFoundError(path)
        return path

    def __call__(self, rgb: np.ndarray, landmarks_norm: np.ndarray) -> np.ndarray:
        face = aligned_face(rgb, landmarks_norm, 112)[:, :, ::-1]  # insightface models take BGR
        return self.model.get_feat(face).reshape(-1).astype(np.float32)


class DlibEmbedder:
    name, dim = "dlib-resnet", 128

    def __init__(self):
        import dlib
        import face_recognition_models as frm

        self.shape = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        self._rect = dlib.rectangle

    def __call__(self, rgb: np.ndarray, landmarks_norm: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        pts = landmarks_norm[:468, :2] * [w, h]
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        rect = self._rect(int(x0), int(y0), int(x1), int(y1))
        img = np.ascontiguousarray(rgb)
        return np.asarray(self.net.compute_face_descriptor(img, self.shape(img, rect)), dtype=np.float32)


def make_embedder(backend: str = "auto"):
    """An embedder for `backend`; `auto` prefers ArcFace and falls back to dlib with a warning."""
    if backend not in BACKENDS:
        raise UserError(f"unknown identity backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend in ("auto", "insightface"):
        try:
            return ArcFaceEmbedder(ArcFaceEmbedder.locate(download=True))
        except Exception as exc:  # offline, a broken download, no onnxruntime provider ...
            where = insightface_root() / "models" / INSIGHTFACE_PACK / INSIGHTFACE_MODEL
            if backend == "insightface":
                raise UserError(
                    f"InsightFace ArcFace is not available ({type(exc).__name__}): put the '{INSIGHTFACE_PACK}' "
                    f"pack at {where.parent} (or set INSIGHTFACE_HOME), or use --identity-backend dlib"
                ) from None
            log.warning("InsightFace pack not available (%s); using dlib's 128-D ResNet instead", type(exc).__name__)
    return DlibEmbedder()


def clip_embedding(embedder, frames: list[np.ndarray], landmarks: list[np.ndarray]) -> np.ndarray:
    """Mean of the L2-normalised embeddings of a few frames, normalised again."""
    vecs = [embedder(f, lm) for f, lm in zip(frames, landmarks)]
    vecs = [v / (np.linalg.norm(v) + 1e-8) for v in vecs]
    mean = np.mean(vecs, axis=0)
    return (mean / (np.linalg.norm(mean) + 1e-8)).astype(np.float32)


# The backends by the name recorded with the data (shards' manifest, checkpoints' id_dim): one table.
RECORDED = {ArcFaceEmbedder.name: ("insightface", ArcFaceEmbedder.dim), DlibEmbedder.name: ("dlib", DlibEmbedder.dim)}


def embedding_dim(recorded_name: str) -> int:
    """512 for insightface-arcface, 128 for dlib-resnet."""
    return RECORDED[recorded_name][1]


def backend_choice(recorded_name: str) -> str:
    """The make_embedder choice that gives the backend recorded as `recorded_name`."""
    return RECORDED[recorded_name][0]


def backend_for_dim(dim: int) -> str:
    """The make_embedder choice whose embeddings have `dim` dimensions."""
    return next(choice for choice, d in RECORDED.values() if d == dim)
