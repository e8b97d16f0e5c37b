"""The bad-input corpus: media made at test time (:mod:`.media`), the case table (:mod:`.cases`) and a small
HTTP client for the stack (:mod:`.client`). :func:`write_corpus` writes every media case to a directory."""

from __future__ import annotations

from pathlib import Path


def write_corpus(directory: str | Path) -> dict[str, Path]:
    """Every media case as a file ``<id><ext>`` under ``directory`` (made if needed); id -> path."""
    from tests.badinput.cases import MEDIA_CASES

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for case in MEDIA_CASES:
        path = directory / (case.id + Path(case.filename).suffix.lower())
        path.write_bytes(case.make())
        out[case.id] = path
    return out
