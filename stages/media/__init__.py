"""Media in and out: audio and portrait decoding/validation, framing, lip-sync offset, bucket smoothing, MP4
encoding. Pure Python (PyAV, soundfile, librosa, Pillow, numpy); no Ray, S3 or HTTP. See docs/media.md."""

from stages.media.audio_in import LoadedAudio, load_audio, sniff_audio
from stages.media.encode import EncodeStats, Mp4Writer, to_uint8, write_metadata, write_poster
from stages.media.errors import MediaError
from stages.media.framing import Framed, frame_portrait, keep_resolution_size, numpy_slice_box, vertical_box
from stages.media.image_in import LoadedImage, load_image, sniff_image
from stages.media.lipsync import clamp_offset, estimate_av_offset
from stages.media.smoothing import smooth_buckets

__all__ = [
    "EncodeStats", "Framed", "LoadedAudio", "LoadedImage", "MediaError", "Mp4Writer", "clamp_offset",
    "estimate_av_offset", "frame_portrait", "keep_resolution_size", "load_audio", "load_image",
    "numpy_slice_box", "smooth_buckets", "sniff_audio", "sniff_image", "to_uint8", "vertical_box",
    "write_metadata", "write_poster",
]
