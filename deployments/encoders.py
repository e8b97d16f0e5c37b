"""Stage deployments 1a, 1b and 2: audio encode, image encode, fusion. Thin wrappers over ``stages``.

Encoders read their input straight from S3 (the key comes with the request) and return the stage payload;
the payload stays in the Ray object store and the manager passes its ObjectRef on to Fusion.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.common import replica_name, run_blocking
from deployments.config import AppConfig, stage_runtime
from sonic_core.face import FaceBox
from stages.payloads import EncodedAudio, EncodedImage, FusedJob


@serve.deployment(name="AudioEncoder", max_ongoing_requests=4, graceful_shutdown_timeout_s=120,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2},
                  ray_actor_options={"num_cpus": 1})
class AudioEncoder:
    def __init__(self, config: dict[str, Any]):
        from stages.audio_encode import AudioEncodeStage

        self.config = AppConfig(**config)
        runtime = stage_runtime(self.config)
        self.storage = self.config.storage()
        self.stage = AudioEncodeStage(runtime.weights, runtime.device)
        self.replica = replica_name()

    def _encode(self, audio_key: str, duration_s: float | None) -> EncodedAudio:
        from stages.media.audio_in import load_audio

        loaded = load_audio(self.storage.get_bytes(audio_key), duration_s=duration_s)
        return self.stage(loaded.samples, loaded.warnings)

    async def encode(self, audio_key: str, duration_s: float | None = None) -> EncodedAudio:
        return await run_blocking(self._encode, audio_key, duration_s)


@serve.deployment(name="ImageEncoder", max_ongoing_requests=4, graceful_shutdown_timeout_s=120,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2},
                  ray_actor_options={"num_cpus": 1})
class ImageEncoder:
    def __init__(self, config: dict[str, Any]):
        from stages.image_encode import ImageEncodeStage

        self.config = AppConfig(**config)
        runtime = stage_runtime(self.config)
        self.storage = self.config.storage()
        self.stage = ImageEncodeStage(runtime.weights, runtime.device, runtime.dtype)
        self.replica = replica_name()

    def _encode(self, image_key: str, face_bbox: FaceBox | None, framing: str, expand_ratio: float,
                min_resolution: int) -> EncodedImage:
        from stages.media.image_in import load_image

        loaded = load_image(self.storage.get_bytes(image_key))
        return self.stage(loaded.image, face_bbox=face_bbox, framing=framing, expand_ratio=expand_ratio,
                          min_resolution=min_resolution, warnings=loaded.warnings)

    async def encode(self, image_key: str, face_bbox: FaceBox | None = None, framing: str = "full",
                     expand_ratio: float = 0.5, min_resolution: int = 512) -> EncodedImage:
        return await run_blocking(self._encode, image_key, face_bbox, framing, expand_ratio, min_resolution)

    def _preview(self, image: bytes, framing: str, expand_ratio: float, face_bbox: str | None) -> dict[str, Any]:
        import numpy as np

        from sonic_core.face import NoFaceError, parse_face_bbox, pick_face
        from stages.media.errors import MediaError
        from stages.media.framing import frame_portrait
        from stages.media.image_in import load_image

        loaded = load_image(image)
        if face_bbox:
            faces = [parse_face_bbox(face_bbox)]
        else:
            faces = self.stage.detector.detect(np.asarray(loaded.image))
        try:
            face = pick_face(faces)
        except NoFaceError:
            raise MediaError("image", "no face found in the portrait",
                             "use a frontal, evenly lit portrait, or pass face_bbox") from None
        framed = frame_portrait(loaded.image, face, framing, expand_ratio)
        return {"width": loaded.size[0], "height": loaded.size[1],
                "face_bbox": [round(v, 1) for v in (face.x, face.y, face.w, face.h)],
                "crop_box": [int(v) for v in framed.box], "faces": len(faces), "framing": framing,
                "expand_ratio": expand_ratio, "warnings": list(loaded.warnings)}

    async def preview(self, image: bytes, framing: str = "full", expand_ratio: float = 0.5,
                      face_bbox: str | None = None) -> dict[str, Any]:
        """Where the face is and which part of the portrait a job with these settings would show (the web
        page's crop preview). Raises MediaError for unusable images or when no face is found."""
        return await run_blocking(self._preview, image, framing, expand_ratio, face_bbox)


@serve.deployment(name="Fusion", max_ongoing_requests=8, graceful_shutdown_timeout_s=60,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4},
                  ray_actor_options={"num_cpus": 1})
class Fusion:
    def __init__(self, config: dict[str, Any]):
        from stages.fusion import FusionStage

        self.config = AppConfig(**config)
        runtime = stage_runtime(self.config)
        self.stage = FusionStage(runtime.weights, runtime.device)

    async def fuse(self, audio: EncodedAudio, image: EncodedImage, dynamic_scale: float = 1.0,
                   motion_scale: float = 1.0, temporal_smoothing: float = 0.0) -> FusedJob:
        return await run_blocking(self.stage, audio, image, dynamic_scale=dynamic_scale,
                                  motion_scale=motion_scale, temporal_smoothing=temporal_smoothing)

    async def describe(self, audio: EncodedAudio, image: EncodedImage) -> dict[str, Any]:
        """The small facts about both encodings that the manager keeps in the job record (so the manager
        never pulls the encodings themselves out of the object store)."""
        return {
            "size": list(image.size),
            "framed_size": list(image.framed_size),
            "face_bbox": list(image.face.as_xyxy()),
            "face_xywh": [image.face.x, image.face.y, image.face.w, image.face.h],
            "crop_box": list(image.crop_box),
            "num_samples": audio.num_samples,
            "num_frames": audio.clips.num_frames,
            "warnings": [*audio.warnings, *image.warnings],
        }
