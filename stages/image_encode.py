"""Stage 1b: portrait -> face box, framing, CLIP embeds and VAE latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sonic_core.conditioning import encode_image
from sonic_core.face import FaceBox, NoFaceError, make_face_detector, pick_face
from sonic_core.image import prepare_image
from sonic_core.weights import WeightsLayout, load_image_encoder, load_vae
from stages.media.errors import MediaError
from stages.media.framing import frame_portrait
from stages.payloads import EncodedImage


class ImageEncodeStage:
    def __init__(self, weights: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        layout = WeightsLayout(Path(weights))
        self.detector = make_face_detector(layout.root, device)
        self.image_encoder = load_image_encoder(layout, device, dtype)
        self.vae = load_vae(layout, device, dtype)

    def detect(self, image: Image.Image) -> FaceBox:
        try:
            return pick_face(self.detector.detect(np.asarray(image.convert("RGB"))))
        except NoFaceError:
            raise MediaError("image", "no face found in the image",
                             "use a frontal, evenly lit portrait, or pass face_bbox as x,y,w,h") from None

    def __call__(self, image: Image.Image, *, face_bbox: FaceBox | None = None, framing: str = "full",
                 expand_ratio: float = 0.5, min_resolution: int = 512,
                 warnings: list[str] | None = None) -> EncodedImage:
        """Frame the portrait around the face, then detect again in the framed image (as the reference
        does after cropping) unless the caller gave the box."""
        face = face_bbox or self.detect(image)
        framed = frame_portrait(image, face, framing, expand_ratio)
        face_in_frame = framed.face if (face_bbox or framing == "full") else self.detect(framed.image)
        prepared = prepare_image(framed.image, face_in_frame, min_resolution)
        return EncodedImage(
            encoding=encode_image(self.image_encoder, self.vae, prepared),
            size=prepared.size,
            framed_size=framed.image.size,
            face=face_in_frame,
            crop_box=framed.box,
            warnings=list(warnings or []),
        )
