"""Single-process runner: every stage in this process, the same units the distributed pipeline calls."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sonic_core.decode import decode_chunks
from sonic_core.engine import MIN_SHARP_STEPS, GenerationSettings
from sonic_core.face import FaceBox
from sonic_core.sampler import make_schedule, merge_windows, plan_windows
from sonic_core.weights import WeightsLayout, scheduler_config, warn_if_tiny
from stages.audio_encode import AudioEncodeStage
from stages.diffusion import DiffusionStage
from stages.fusion import FusionStage
from stages.image_encode import ImageEncodeStage
from stages.media.audio_in import LoadedAudio, load_audio
from stages.media.encode import write_metadata
from stages.media.image_in import LoadedImage, load_image
from stages.payloads import WindowTask
from stages.postprocess import PostProcessStage, encode_stream, mouth_box
from stages.timing import LapTimer

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class JobInputs:
    image: str | Path | bytes | LoadedImage
    audio: str | Path | bytes | LoadedAudio
    face_bbox: FaceBox | None = None
    framing: str = "full"
    expand_ratio: float = 0.5
    duration_s: float | None = None
    crf: int = 18
    keep_resolution: bool = False
    lip_sync: bool = False


@dataclass
class JobOutputs:
    video: Path
    poster: Path
    metadata: Path
    raw_frames: Path | None = None
    info: dict = field(default_factory=dict)


class RawFrameSink:
    """Streams float32 frames (n, H, W, 3) into a .npy file whose length is known up front."""

    def __init__(self, path: Path, total: int, height: int, width: int):
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, height, width, 3))
        self.cursor = 0

    def write(self, frames: np.ndarray) -> None:
        self.array[self.cursor:self.cursor + len(frames)] = frames
        self.cursor += len(frames)

    def close(self) -> None:
        self.array.flush()
        del self.array


class LocalPipeline:
    def __init__(self, weights: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.layout = WeightsLayout(Path(weights))
        self.tiny = warn_if_tiny(self.layout)
        self.audio_stage = AudioEncodeStage(weights, device)
        self.image_stage = ImageEncodeStage(weights, device, dtype)
        self.fusion_stage = FusionStage(weights, device)
        self.diffusion_stage = DiffusionStage(weights, device, dtype)
        self.post_stage = PostProcessStage(weights, device)
        self.scheduler_config = scheduler_config(self.layout)

    def generate(self, inputs: JobInputs, settings: GenerationSettings, output: str | Path,
                 raw_frames: str | Path | None = None, progress: Progress | None = None) -> JobOutputs:
        progress = progress or (lambda stage, done, total: None)
        timer = LapTimer()
        lap, timings = timer.lap, timer.timings

        if settings.steps < MIN_SHARP_STEPS:
            log.warning("%d denoising steps: fewer than %d blurs the mouth", settings.steps, MIN_SHARP_STEPS)
        audio = inputs.audio if isinstance(inputs.audio, LoadedAudio) else load_audio(
            inputs.audio, duration_s=inputs.duration_s)
        image = inputs.image if isinstance(inputs.image, LoadedImage) else load_image(inputs.image)
        warnings = [*audio.warnings, *image.warnings]
        encoded_audio = self.audio_stage(audio.samples, audio.warnings)
        encoded_image = self.image_stage(image.image, face_bbox=inputs.face_bbox, framing=inputs.framing,
                                         expand_ratio=inputs.expand_ratio, min_resolution=settings.min_resolution)
        lap("encode")
        fused = self.fusion_stage(encoded_audio, encoded_image, dynamic_scale=settings.dynamic_scale,
                                  motion_scale=settings.motion_scale,
                                  temporal_smoothing=settings.temporal_smoothing)
        lap("fusion")

        schedule = make_schedule(self.scheduler_config, settings.steps, settings.noise_strength,
                                 settings.guidance_image, settings.guidance_audio)
        job_id = "local"
        diffusion = self.diffusion_stage
        diffusion.load_job(job_id, fused.conditioning)
        latents = diffusion.start_latents(fused, settings.seed, schedule)
        frames_total = fused.conditioning.num_frames
        try:
            for n, step in enumerate(schedule.steps):
                windows = plan_windows(frames_total, step.index)
                results = [diffusion.denoise_window(WindowTask(job_id, step, w, latents[:, w])).latents
                           for w in windows]
                latents = merge_windows(frames_total, windows, results)
                progress("denoise", n + 1, len(schedule.steps))
        finally:
            diffusion.release_job(job_id)
        lap("denoise")

        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        fps = 25.0 if settings.interpolate else 12.5
        out_frames = 2 * frames_total - 1 if settings.interpolate else frames_total
        width, height = encoded_image.size
        sink = RawFrameSink(Path(raw_frames), out_frames, height, width) if raw_frames else None
        poster = output.with_suffix(".jpg")
        out_size = encoded_image.framed_size if inputs.keep_resolution else None
        chunks = decode_chunks(frames_total)

        def decoded():
            for i, chunk in enumerate(chunks):
                yield diffusion.decode_chunk(latents[0, chunk.start:chunk.stop])
                progress("decode", i + 1, len(chunks))

        def frame_chunks():
            for array in self.post_stage.display_chunks(decoded(), settings.interpolate):
                if sink:
                    sink.write(array)
                yield array

        lip_box = (mouth_box(encoded_image.face, encoded_image.framed_size, encoded_image.size)
                   if inputs.lip_sync else None)
        encoded = encode_stream(frame_chunks(), output, (width, height), fps, audio, crf=inputs.crf,
                                out_size=out_size, poster=poster, lip_sync_box=lip_box)
        if sink:
            sink.close()
        lap("decode_encode")

        info = {
            "duration_s": audio.duration_s,
            "frames": out_frames,
            "fps": fps,
            "width": width,
            "height": height,
            "parameters": {**settings.__dict__, "framing": inputs.framing, "expand_ratio": inputs.expand_ratio,
                           "face_bbox": list(encoded_image.face.as_xyxy())},
            "lip_sync_offset_s": encoded.lip_sync_estimate_s,
            "lip_sync_applied_s": encoded.lip_sync_applied_s,
            "timings_s": timings,
            "tiny_weights": self.tiny,
            "warnings": warnings,
            "encoder": encoded.stats.__dict__,
        }
        if self.tiny:
            info["notice"] = ("made with TINY RANDOM weights: this video is noise, not a real model. "
                              "Get real weights with `sonic-serve weights download DIR`.")
        metadata = output.with_suffix(".json")
        write_metadata(metadata, info)
        return JobOutputs(output, poster, metadata, Path(raw_frames) if raw_frames else None, info)
