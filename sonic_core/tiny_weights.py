"""Deterministic tiny random-weight checkpoints in the official layout (for tests, CI and the demo).

The files have the official names, formats and key sets, only with small widths, so every loader runs the
same code as for the real weights. The output of these networks is noise; a marker file says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sonic_core.weights import SVD, TINY_MARKER

CROSS_DIM = 32
AUDIO_TOKENS = 32

UNET_CONFIG = {
    "_class_name": "UNetSpatioTemporalConditionModel",
    "addition_time_embed_dim": 32,
    "block_out_channels": [32, 32, 32, 32],
    "cross_attention_dim": CROSS_DIM,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "in_channels": 8,
    "layers_per_block": 2,
    "num_attention_heads": [1, 1, 1, 1],
    "num_frames": 25,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 96,
    "sample_size": 96,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
}
VAE_CONFIG = {
    "_class_name": "AutoencoderKLTemporalDecoder",
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "out_channels": 3,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}
SCHEDULER_CONFIG = {  # the SVD-xt scheduler, unchanged
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "v_prediction",
    "set_alpha_to_one": False, "sigma_max": 700.0, "sigma_min": 0.002, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "timestep_type": "continuous", "trained_betas": None,
    "use_karras_sigmas": True,
}
MODEL_INDEX = {
    "_class_name": "StableVideoDiffusionPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
    "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
}


def _fp16_values(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


class TinyYoloFace(nn.Module):
    """A small YOLOv5-face-shaped detector: ``forward(image, grids) -> [1, N, 16]`` (xywh, obj, 5 landmarks,
    class) decoded with YOLOv5's rules. Random weights; objectness biased up so it always proposes boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.SiLU(),
                                  nn.Conv2d(8, 8, 3, 2, 1), nn.SiLU())
        self.down = nn.ModuleList([nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)])
        self.heads = nn.ModuleList([nn.Conv2d(8, 3 * 16, 1) for _ in range(3)])
        self.register_buffer("anchors", torch.tensor([[[4.0, 5.0], [8.0, 10.0], [13.0, 16.0]],
                                                      [[23.0, 29.0], [43.0, 55.0], [73.0, 105.0]],
                                                      [[146.0, 217.0], [231.0, 300.0], [335.0, 433.0]]]))
        with torch.no_grad():
            for head in self.heads:
                head.bias.view(3, 16)[:, 4] += 3.0
                head.bias.view(3, 16)[:, 15] += 3.0

    def forward(self, image: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        feats = [self.stem(image)]
        for down in self.down:
            feats.append(down(feats[-1]))
        outputs = []
        strides = [8.0, 16.0, 32.0]
        for level, head in enumerate(self.heads):
            p = head(feats[level])
            bs, _, ny, nx = p.shape
            p = p.view(bs, 3, 16, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            grid = grids[level]
            anchor = self.anchors[level].view(1, 3, 1, 1, 2)
            y = torch.sigmoid(p)
            xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * strides[level]
            wh = (y[..., 2:4] * 2.0) ** 2 * anchor
            offset = (grid * strides[level]).unsqueeze(-2)
            marks = p[..., 5:15].view(bs, 3, ny, nx, 5, 2) * anchor.unsqueeze(-2) + offset
            out = torch.cat([xy, wh, y[..., 4:5], marks.view(bs, 3, ny, nx, 10), y[..., 15:16]], -1)
            outputs.append(out.view(bs, -1, 16))
        return torch.cat(outputs, 1)


def make_tiny_weights(root: str | Path, seed: int = 0) -> Path:
    """Write the whole layout under ``root`` (created if needed); same seed -> same bytes of weights."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperModel,
    )

    from sonic_core.models.audio_adapters import AudioToBucket, AudioToTokens
    from sonic_core.models.rife import IFNet
    from sonic_core.models.unet import build_sonic_unet

    root = Path(root)
    svd = root / SVD
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)

        unet = build_sonic_unet(UNET_CONFIG)
        (root / "Sonic").mkdir(parents=True, exist_ok=True)
        torch.save(unet.state_dict(), root / "Sonic" / "unet.pth")
        stock = {k: v for k, v in _fp16_values(unet).items() if "_ip." not in k}
        _write_json(svd / "unet" / "config.json", UNET_CONFIG)
        save_file(stock, svd / "unet" / "diffusion_pytorch_model.fp16.safetensors")

        vae = AutoencoderKLTemporalDecoder(**{k: v for k, v in VAE_CONFIG.items() if not k.startswith("_")})
        _write_json(svd / "vae" / "config.json", VAE_CONFIG)
        save_file(_fp16_values(vae), svd / "vae" / "diffusion_pytorch_model.fp16.safetensors")

        clip_config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=224, patch_size=32,
                                       projection_dim=CROSS_DIM)
        clip = CLIPVisionModelWithProjection(clip_config)
        clip.to(torch.float16).save_pretrained(svd / "image_encoder", variant="fp16")
        CLIPImageProcessor().save_pretrained(svd / "feature_extractor")
        _write_json(svd / "scheduler" / "scheduler_config.json", SCHEDULER_CONFIG)
        _write_json(svd / "model_index.json", MODEL_INDEX)

        whisper_config = WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                       decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                       vocab_size=64, num_mel_bins=80, max_source_positions=1500,
                                       max_target_positions=32, pad_token_id=0, bos_token_id=1,
                                       eos_token_id=2, decoder_start_token_id=1)
        whisper = WhisperModel(whisper_config)
        whisper.save_pretrained(root / "whisper-tiny")
        WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "whisper-tiny")

        layers, width = whisper_config.encoder_layers + 1, whisper_config.d_model
        tokens = AudioToTokens(10 * layers * width, 64, AUDIO_TOKENS, CROSS_DIM)
        bucket = AudioToBucket(50 * width + CROSS_DIM, 64, 2)
        torch.save(tokens.state_dict(), root / "Sonic" / "audio2token.pth")
        torch.save(bucket.state_dict(), root / "Sonic" / "audio2bucket.pth")

        rife = IFNet(width=8)
        (root / "RIFE").mkdir(exist_ok=True)
        torch.save({f"module.{k}": v for k, v in rife.state_dict().items()}, root / "RIFE" / "flownet.pkl")

        detector = torch.jit.script(TinyYoloFace().eval())
        detector.save(str(root / "yoloface_v5m.pt"))

    _write_json(root / TINY_MARKER, {
        "seed": seed,
        "warning": "Tiny random weights for tests and demos. Videos made with them are noise, not a real model.",
        "real_weights": "sonic-serve weights download DIR (needs internet); see README 'Real weights'",
    })
    return root
