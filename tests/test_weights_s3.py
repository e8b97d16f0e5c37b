"""`sonic-serve weights push/pull` and the per-node weights cache against a real S3 server."""

from __future__ import annotations

import threading

import pytest

from deployments.weights_store import MANIFEST, ensure_local_weights, pull, push
from sonic_core.weights import blocking_problems, verify
from sonic_serve.cli import main
from tests.helpers import tiny_weights

pytestmark = pytest.mark.s3


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_push_pull_round_trip_is_incremental(s3_storage, tmp_path):
    source = tiny_weights()
    uri = f"s3://{s3_storage.bucket}/models/tiny"
    uploaded, skipped = push(source, uri, s3_storage.settings)
    assert uploaded == len(_files(source)) and skipped == 0
    assert push(source, uri, s3_storage.settings) == (0, uploaded)          # unchanged: nothing sent

    target = tmp_path / "pulled"
    _, fetched = pull(uri, target, s3_storage.settings)
    assert fetched == uploaded and _files(target) == _files(source)
    assert not blocking_problems(verify(target))
    assert pull(uri, target, s3_storage.settings)[1] == 0                    # ETag and size match: no download

    (target / "Sonic" / "unet.pth").write_bytes(b"corrupt")                   # size differs -> fetched again
    assert pull(uri, target, s3_storage.settings)[1] == 1
    assert _files(target) == _files(source)
    assert (target / MANIFEST).is_file()


def test_ensure_local_weights_syncs_once_per_node(s3_storage, tmp_path):
    uri = f"s3://{s3_storage.bucket}/models/tiny"
    push(tiny_weights(), uri, s3_storage.settings)
    assert ensure_local_weights(tmp_path / "plain", tmp_path / "cache") == tmp_path / "plain"
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        ensure_local_weights(uri, tmp_path / "cache", s3_storage.settings))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    root = results[0]
    assert root == tmp_path / "cache" / s3_storage.bucket / "models" / "tiny"
    assert _files(root) == _files(tiny_weights())


def test_cli_push_and_pull(s3_storage, tmp_path, monkeypatch, capsys):
    for name, value in s3_storage.settings.as_env().items():
        monkeypatch.setenv(name, value)
    uri = f"s3://{s3_storage.bucket}/cli/tiny"
    assert main(["weights", "push", str(tiny_weights()), uri]) == 0
    assert main(["weights", "pull", uri, str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "pushed" in out and "pulled" in out
    assert _files(tmp_path / "w") == _files(tiny_weights())
    assert main(["weights", "pull", f"s3://{s3_storage.bucket}/nothing-here", str(tmp_path / "x")]) == 2
