"""The official weights layout, its verification and strict loading of each network.

::

    ROOT/Sonic/{unet.pth, audio2token.pth, audio2bucket.pth}
    ROOT/stable-video-diffusion-img2vid-xt/  (diffusers layout; fp16 variant files)
    ROOT/whisper-tiny/
    ROOT/RIFE/flownet.pkl
    ROOT/yoloface_v5m.pt                     (optional: OpenCV's Haar cascade is the fallback)

Every size is read from the directory (config.json files, tensor shapes), so tiny and full checkpoints load
through the same code. Loading is strict: a missing, unexpected or mis-shaped tensor is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SVD = "stable-video-diffusion-img2vid-xt"
TINY_MARKER = "TINY-RANDOM-WEIGHTS.json"
REAL_WEIGHTS_HELP = ("real weights: `sonic-serve weights download DIR` on a machine with internet "
                     "(see README, 'Real weights')")

# Tensors that checkpoints may carry but that are rebuilt by the model code (not weights).
_BENIGN_UNEXPECTED = ("position_ids", "proj_out.weight")


class WeightsError(RuntimeError):
    """The weights directory is incomplete or does not match the networks."""


@dataclass(frozen=True)
class WeightsLayout:
    root: Path

    @property
    def sonic(self) -> Path:
        return self.root / "Sonic"

    @property
    def svd(self) -> Path:
        return self.root / SVD

    @property
    def whisper(self) -> Path:
        return self.root / "whisper-tiny"

    @property
    def rife(self) -> Path:
        return self.root / "RIFE" / "flownet.pkl"

    @property
    def face_detector(self) -> Path:
        return self.root / "yoloface_v5m.pt"

    @property
    def is_tiny(self) -> bool:
        return (self.root / TINY_MARKER).is_file()

    def required_files(self) -> dict[str, Path]:
        s = self.svd
        return {
            "Sonic UNet": self.sonic / "unet.pth",
            "Sonic audio2token": self.sonic / "audio2token.pth",
            "Sonic audio2bucket": self.sonic / "audio2bucket.pth",
            "SVD model index": s / "model_index.json",
            "SVD UNet config": s / "unet" / "config.json",
            "SVD UNet weights": s / "unet" / "diffusion_pytorch_model.fp16.safetensors",
            "SVD VAE config": s / "vae" / "config.json",
            "SVD VAE weights": s / "vae" / "diffusion_pytorch_model.fp16.safetensors",
            "CLIP image encoder config": s / "image_encoder" / "config.json",
            "CLIP image encoder weights": s / "image_encoder" / "model.fp16.safetensors",
            "scheduler config": s / "scheduler" / "scheduler_config.json",
            "CLIP feature extractor": s / "feature_extractor" / "preprocessor_config.json",
            "whisper config": self.whisper / "config.json",
            "whisper feature extractor": self.whisper / "preprocessor_config.json",
            "RIFE flownet": self.rife,
        }

    def whisper_weights(self) -> Path | None:
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (self.whisper / name).is_file():
                return self.whisper / name
        return None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: unreadable JSON ({exc})") from exc


def verify(root: str | Path) -> list[str]:
    """Every problem found in the layout under ``root``, as human-readable lines (empty when complete)."""
    layout = WeightsLayout(Path(root))
    if not layout.root.is_dir():
        return [f"{layout.root}: not a directory. {REAL_WEIGHTS_HELP}, or `sonic-serve weights make-tiny DIR`"]
    problems = []
    for what, path in layout.required_files().items():
        if not path.is_file():
            problems.append(f"missing {what}: {path}")
        elif path.stat().st_size == 0:
            problems.append(f"empty {what}: {path}")
        elif path.suffix == ".json":
            try:
                read_json(path)
            except WeightsError as exc:
                problems.append(f"malformed {what}: {exc}")
    if layout.whisper_weights() is None:
        problems.append(f"missing whisper weights: {layout.whisper}/model.safetensors (or pytorch_model.bin)")
    for what, path in (("Sonic audio2token", layout.sonic / "audio2token.pth"),
                       ("Sonic audio2bucket", layout.sonic / "audio2bucket.pth"),
                       ("RIFE flownet", layout.rife)):
        if path.is_file() and path.stat().st_size:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(state, dict) or not state:
                    problems.append(f"malformed {what}: {path} holds no state dict")
            except Exception as exc:  # noqa: BLE001 - any unpickling failure means a malformed file
                problems.append(f"malformed {what}: {path} ({type(exc).__name__}: {exc})")
    if not layout.face_detector.is_file():
        problems.append(f"note: no face detector at {layout.face_detector}; OpenCV's Haar cascade will be used")
    return problems


def blocking_problems(problems: list[str]) -> list[str]:
    return [p for p in problems if not p.startswith("note:")]


def load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"missing {path}. {REAL_WEIGHTS_HELP}") from exc


def _check_loading(what: str, info: dict) -> None:
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(_BENIGN_UNEXPECTED)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise WeightsError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                           f"mismatched {mismatched[:5]} (of {len(missing)}/{len(unexpected)}/{len(mismatched)})")


def _place(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_unet(layout: WeightsLayout, device="cpu", dtype=torch.float32):
    from sonic_core.models.unet import build_sonic_unet

    config = read_json(layout.svd / "unet" / "config.json")
    unet = build_sonic_unet(config)
    result = unet.load_state_dict(load_state(layout.sonic / "unet.pth"), strict=False)
    _check_loading("Sonic/unet.pth", {"missing_keys": result.missing_keys,
                                      "unexpected_keys": result.unexpected_keys})
    return _place(unet, device, dtype)


def load_vae(layout: WeightsLayout, device="cpu", dtype=torch.float32):
    from diffusers import AutoencoderKLTemporalDecoder

    vae, info = AutoencoderKLTemporalDecoder.from_pretrained(
        layout.svd, subfolder="vae", variant="fp16", output_loading_info=True, local_files_only=True)
    _check_loading("SVD VAE", info)
    return _place(vae, device, dtype)


def load_image_encoder(layout: WeightsLayout, device="cpu", dtype=torch.float32):
    from transformers import CLIPVisionModelWithProjection

    model, info = CLIPVisionModelWithProjection.from_pretrained(
        layout.svd / "image_encoder", variant="fp16", output_loading_info=True, local_files_only=True)
    _check_loading("CLIP image encoder", info)
    return _place(model, device, dtype)


def load_whisper(layout: WeightsLayout, device="cpu"):
    """The whisper encoder (fp32, as in the reference) and its feature extractor."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    model, info = WhisperModel.from_pretrained(layout.whisper, output_loading_info=True, local_files_only=True)
    _check_loading("whisper", info)
    extractor = WhisperFeatureExtractor.from_pretrained(layout.whisper, local_files_only=True)
    return _place(model.get_encoder(), device, torch.float32), extractor


def load_audio_adapters(layout: WeightsLayout, device="cpu"):
    """``(audio2token, audio2bucket)`` in fp32, as in the reference."""
    from sonic_core.models.audio_adapters import AudioToBucket, AudioToTokens

    try:
        tokens = AudioToTokens.from_state_dict(load_state(layout.sonic / "audio2token.pth"))
        bucket = AudioToBucket.from_state_dict(load_state(layout.sonic / "audio2bucket.pth"))
    except (KeyError, RuntimeError) as exc:
        raise WeightsError(f"Sonic audio adapters do not match the expected networks: {exc}") from exc
    return _place(tokens, device, torch.float32), _place(bucket, device, torch.float32)


def load_rife(layout: WeightsLayout, device="cpu"):
    from sonic_core.models.rife import IFNet

    try:
        model = IFNet.from_checkpoint_state(load_state(layout.rife))
    except (ValueError, RuntimeError) as exc:
        raise WeightsError(f"{layout.rife}: {exc}") from exc
    return _place(model, device, torch.float32)


def scheduler_config(layout: WeightsLayout) -> dict:
    return read_json(layout.svd / "scheduler" / "scheduler_config.json")


def warn_if_tiny(layout: WeightsLayout) -> bool:
    if layout.is_tiny:
        log.warning("weights under %s are TINY RANDOM test weights: the video is noise, not a real model. %s",
                    layout.root, REAL_WEIGHTS_HELP)
    return layout.is_tiny
