"""Face detection: the official YOLOv5-face TorchScript when present, else OpenCV's bundled Haar cascade.

Boxes are ``(x, y, w, h)`` in source-image pixels. The YOLO path reproduces the reference post-processing
(416 short side, sides rounded up to /32, confidence 0.5, NMS IoU 0.45) so it yields the same box.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

log = logging.getLogger(__name__)


class NoFaceError(ValueError):
    """The image contains no detectable face."""


@dataclass(frozen=True)
class FaceBox:
    x: float
    y: float
    w: float
    h: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return self.w * self.h

    def as_xyxy(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.x + self.w, self.y + self.h


def parse_face_bbox(text: str) -> FaceBox:
    """Parse ``"x,y,w,h"`` (pixels) as given on the command line or in an API request."""
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise ValueError(f"face bbox must be 'x,y,w,h' in pixels, got {text!r}") from exc
    if w <= 0 or h <= 0:
        raise ValueError(f"face bbox width and height must be positive, got {text!r}")
    return FaceBox(x, y, w, h)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; returns kept indices by decreasing score."""
    order = torch.argsort(scores, descending=True, stable=True)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    for idx in order.tolist():
        if suppressed[idx]:
            continue
        keep.append(idx)
        top_left = torch.maximum(boxes[idx, :2], boxes[:, :2])
        bottom_right = torch.minimum(boxes[idx, 2:], boxes[:, 2:])
        inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        suppressed |= inter / (areas[idx] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


class YoloFaceDetector:
    """YOLOv5-face TorchScript (``yoloface_v5m.pt``): ``model(image, grids) -> [1, N, 16]`` raw predictions."""

    input_short_side = 416
    strides = (8, 16, 32)

    def __init__(self, path: str | Path, device: str = "cpu", conf_threshold: float = 0.5,
                 iou_threshold: float = 0.45):
        self.device = torch.device(device)
        self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.conf_threshold, self.iou_threshold = conf_threshold, iou_threshold

    def _grids(self, height: int, width: int) -> list[torch.Tensor]:
        grids = []
        for stride in self.strides:
            ys, xs = torch.meshgrid(torch.arange(height // stride), torch.arange(width // stride), indexing="ij")
            grids.append(torch.stack((xs, ys), 2).view(1, 1, height // stride, width // stride, 2).float()
                         .to(self.device))
        return grids

    @torch.no_grad()
    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        h0, w0 = rgb.shape[:2]
        ratio = self.input_short_side / min(h0, w0)
        h1 = int(h0 * ratio + 31) // 32 * 32
        w1 = int(w0 * ratio + 31) // 32 * 32
        resized = cv2.resize(rgb, (w1, h1), interpolation=cv2.INTER_LINEAR)
        image = torch.from_numpy(resized).to(self.device).permute(2, 0, 1).float().div(255).unsqueeze(0)
        pred = self.model(image, self._grids(h1, w1)).cpu()[0]

        cand = pred[pred[:, 4] > self.conf_threshold].clone()
        if not len(cand):
            return []
        cand[:, 15:] *= cand[:, 4:5]
        conf = cand[:, 15:].max(1).values
        xyxy = torch.cat([cand[:, :2] - cand[:, 2:4] / 2, cand[:, :2] + cand[:, 2:4] / 2], 1)
        keep_conf = conf > self.conf_threshold
        xyxy, conf = xyxy[keep_conf], conf[keep_conf]
        kept = _nms(xyxy, conf, self.iou_threshold) if len(conf) else torch.zeros(0, dtype=torch.long)
        det = torch.cat([xyxy, conf[:, None]], 1)[kept].numpy()
        faces = []
        for x1, y1, x2, y2, score in det:
            # float32 scaling, float64 differences: the reference's arithmetic, to the bit
            bx, by = float(x1 * w0 / w1), float(y1 * h0 / h1)
            faces.append(FaceBox(bx, by, float(x2 * w0 / w1) - bx, float(y2 * h0 / h1) - by, float(score)))
        return faces


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (ships inside opencv-python-headless)."""

    def __init__(self) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise RuntimeError(f"could not load OpenCV Haar cascade from {path}")

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        min_side = max(24, min(gray.shape) // 10)
        found = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        faces = [FaceBox(float(x), float(y), float(w), float(h)) for x, y, w, h in found]
        return sorted(faces, key=lambda f: f.area, reverse=True)


def make_face_detector(weights_root: str | Path | None, device: str = "cpu") -> YoloFaceDetector | HaarFaceDetector:
    path = Path(weights_root) / "yoloface_v5m.pt" if weights_root else None
    if path is not None and path.is_file():
        return YoloFaceDetector(path, device)
    log.warning("yoloface_v5m.pt not found under %s: using OpenCV's Haar cascade face detector, "
                "whose boxes differ from the reference detector's", weights_root)
    return HaarFaceDetector()


def pick_face(faces: list[FaceBox]) -> FaceBox:
    """Choose one face the way the reference does (its ``maxface`` rule).

    The reference compares every later face with the *first* one and keeps the last that is larger; with two
    faces that is the larger one. Kept as is because it decides the frames (see docs/reference-notes.md).
    """
    if not faces:
        raise NoFaceError("no face found in the image: use a frontal, evenly lit portrait or pass face_bbox")
    chosen = faces[0]
    for face in faces[1:]:
        if face.area > faces[0].area:
            chosen = face
    if len(faces) > 1:
        log.warning("found %d faces; using the one at x=%.0f y=%.0f w=%.0f h=%.0f",
                    len(faces), chosen.x, chosen.y, chosen.w, chosen.h)
    return chosen
