"""Download the official weights from the Hugging Face Hub (needs internet; never used by tests)."""

from __future__ import annotations

from pathlib import Path

SOURCES = (
    # (repo id, sub-directory of the weights root, file patterns)
    ("LeonJoe13/Sonic", ".", ["Sonic/*", "RIFE/*", "yoloface_v5m.pt"]),
    ("stabilityai/stable-video-diffusion-img2vid-xt", "stable-video-diffusion-img2vid-xt",
     ["model_index.json", "*/config.json", "*/*_config.json", "*/*.fp16.safetensors",
      "feature_extractor/preprocessor_config.json"]),
    ("openai/whisper-tiny", "whisper-tiny",
     ["config.json", "model.safetensors", "preprocessor_config.json", "*.json", "*.txt"]),
)


def download_weights(root: str | Path, token: str | None = None) -> Path:
    from huggingface_hub import snapshot_download

    root = Path(root)
    for repo_id, subdir, patterns in SOURCES:
        print(f"downloading {repo_id} -> {root / subdir}")
        snapshot_download(repo_id=repo_id, local_dir=root / subdir, allow_patterns=patterns, token=token)
    return root
