"""The bad-input corpus as data: every case, what the API must answer, and why (the decision).

Media cases (:data:`MEDIA_CASES`) replace one file of an otherwise good multipart job; they also run straight
through ``stages.media`` without Ray. Request cases (:data:`REQUEST_CASES`) send anything else: bad
parameters, JSON, content types, upload keys, webhook URLs, paths and queries, previews and batches.

A rejected case expects a 4xx ``application/problem+json`` whose ``errors`` name ``field`` with a fix. An
accepted case (202) names the warning the job must carry in ``warnings`` (``None``: nothing is wrong with the
upload but its name or container, so no warning); the job is cancelled at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tests.badinput import media as m
from tests.badinput.client import Answer, Api, Part, multipart

ACCEPTED = 202


@dataclass(frozen=True)
class MediaCase:
    id: str
    kind: str                     # "image" or "audio": the part it replaces
    make: Callable[[], bytes]
    filename: str
    status: int                   # 422 or 202
    match: str | None             # 422: in the error message; 202: in a warning (None: no warning)
    why: str

    @property
    def field(self) -> str:
        return self.kind


def _reject(id: str, kind: str, make: Callable[[], bytes], filename: str, match: str, why: str) -> MediaCase:
    return MediaCase(id, kind, make, filename, 422, match, why)


def _accept(id: str, kind: str, make: Callable[[], bytes], filename: str, warning: str | None,
            why: str) -> MediaCase:
    return MediaCase(id, kind, make, filename, ACCEPTED, warning, why)


def _speech(n: int) -> bytes:
    return m.wav_bytes(m.speech_16k()[:n], 16000)


MEDIA_CASES: list[MediaCase] = [
    # -- audio: rejected -----------------------------------------------------------------------------------
    _reject("audio-empty", "audio", lambda: b"", "speech.wav", "empty", "nothing to decode"),
    _reject("audio-riff-header-cut", "audio", lambda: m.good_wav()[:30], "speech.wav", "could not be decoded",
            "a WAV cut inside its header"),
    _reject("audio-wav-header-only", "audio", lambda: m.good_wav()[:44], "speech.wav", "no audio samples",
            "a WAV header and no samples"),
    _reject("audio-riff-garbage", "audio", lambda: b"RIFF\x00\x10\x00\x00WAVEfmt " + m.noise_bytes(3000),
            "speech.wav", "could not be decoded", "WAV magic over random bytes"),
    _reject("audio-random-bytes", "audio", lambda: m.noise_bytes(5000), "speech.mp3", "unknown type",
            "no known magic"),
    _reject("audio-text-file", "audio", lambda: b"WEBVTT\n\n00:00.000 --> 00:01.000\nhello\n", "speech.wav",
            "unknown type", "a subtitle file sent as audio"),
    _reject("audio-png-named-wav", "audio", m.good_png, "speech.wav", "PNG image",
            "magic decides, not the extension"),
    _reject("audio-jpeg-named-mp3", "audio", m.good_jpeg, "speech.mp3", "JPEG image", "an image in the audio part"),
    _reject("audio-pdf-named-m4a", "audio", lambda: b"%PDF-1.7\n" + bytes(200), "speech.m4a", "PDF",
            "a document in the audio part"),
    _reject("audio-webm", "audio", lambda: b"\x1aE\xdf\xa3" + bytes(200), "speech.webm", "WebM",
            "browser recordings must be converted"),
    _reject("audio-heic", "audio", lambda: b"\x00\x00\x00\x18ftypheic" + bytes(200), "speech.m4a", "HEIC",
            "an ISO-BMFF image, not an M4A"),
    _reject("audio-mp4-video-only", "audio", m.video_only_mp4, "lecture.mp4", "no audio track",
            "a screen recording without sound"),
    _reject("audio-id3-tag-only", "audio", m.id3_only, "speech.mp3", "could not be decoded",
            "an MP3 tag without a single frame"),
    _reject("audio-ogg-garbage", "audio", lambda: b"OggS" + m.noise_bytes(3000), "speech.ogg",
            "could not be decoded", "Ogg magic over random bytes"),
    _reject("audio-m4a-truncated", "audio", lambda: m.speech_m4a()[:len(m.speech_m4a()) // 2], "speech.m4a",
            "could not be decoded", "an M4A cut before its index (moov)"),
    _reject("audio-silent", "audio", lambda: m.wav_bytes(np.zeros(32000, np.float32), 16000), "speech.wav",
            "silent", "digital silence: nothing to lip-sync"),
    _reject("audio-dc-offset", "audio", m.dc_only, "speech.wav", "silent", "a flat DC offset is silence too"),
    _reject("audio-nan-float", "audio", lambda: m.wav_bytes(np.full(16000, np.nan, np.float32), 16000, "FLOAT"),
            "speech.wav", "NaN", "float WAV holding NaN"),
    _reject("audio-50ms", "audio", lambda: _speech(800), "speech.wav", "0.050 s", "under the 0.2 s minimum"),
    _reject("audio-79ms", "audio", lambda: _speech(1264), "speech.wav", "0.079 s", "just under 80 ms"),
    _reject("audio-too-long-flac", "audio", m.long_flac, "lecture.flac", "over the 1800 s limit",
            "30 min 10 s: refused from the header, before decoding"),
    _reject("audio-rate-1hz", "audio", lambda: m.raw_wav(m.pcm16(m.speech_16k()[:300]), 1), "speech.wav", "1 Hz",
            "a 1 Hz header would be upsampled 16000x into 300 s of noise"),
    _reject("audio-rate-0hz", "audio", lambda: m.raw_wav(m.pcm16(m.speech_16k()), 0), "speech.wav",
            "could not be decoded", "a 0 Hz header"),
    _reject("audio-rate-4mhz", "audio", lambda: m.raw_wav(m.pcm16(m.speech_16k()), 4_000_000), "speech.wav",
            "4000000 Hz", "no speech recording is sampled at 4 MHz"),
    # -- audio: accepted -----------------------------------------------------------------------------------
    _accept("audio-rate-8k", "audio", lambda: m.resampled_speech(8000), "phone.wav", "below 16000 Hz",
            "telephone audio: upsampled, lip sync may be less precise"),
    _accept("audio-rate-11025", "audio", lambda: m.resampled_speech(11025), "speech.wav", "below 16000 Hz",
            "an odd low rate: upsampled"),
    _accept("audio-clipped", "audio", m.clipped_speech, "speech.wav", "clipped", "distorted but usable speech"),
    _accept("audio-quiet", "audio", lambda: m.speech_at(0.003 / float(np.abs(m.speech_16k()).max())),
            "speech.wav", "very quiet", "speech at -50 dBFS"),
    _accept("audio-wav-truncated", "audio", lambda: m.good_wav()[:len(m.good_wav()) // 2], "speech.wav",
            "cut off", "an upload cut half way: the half that came is used"),
    _accept("audio-wav-header-longer", "audio", lambda: m.raw_wav(m.pcm16(m.speech_16k()), 16000, data_size=10**9),
            "speech.wav", "cut off", "a header announcing 8.7 h over 1 s of samples"),
    _accept("audio-rate-192k", "audio", lambda: m.resampled_speech(192000), "studio.wav", None,
            "a high but valid rate: downsampled, nothing of speech is lost"),
    _accept("audio-wav-named-mp3", "audio", m.good_wav, "speech.mp3", None, "the content decides"),
    _accept("audio-8-channels", "audio", m.multichannel_speech, "speech.wav", None, "mixed down to mono"),
    _accept("audio-mp3-truncated", "audio", lambda: m.speech_mp3()[:len(m.speech_mp3()) // 2], "speech.mp3", None,
            "MP3 frames stand alone and MP3 headers only estimate the length: the part that came is used"),
    # -- images: rejected ----------------------------------------------------------------------------------
    _reject("image-empty", "image", lambda: b"", "portrait.png", "empty", "nothing to decode"),
    _reject("image-random-bytes", "image", lambda: m.noise_bytes(4000), "portrait.png", "unknown type",
            "no known magic"),
    _reject("image-png-truncated", "image", lambda: m.good_png()[:len(m.good_png()) // 2], "portrait.png",
            "damaged", "a PNG cut half way"),
    _reject("image-jpeg-truncated", "image", lambda: m.good_jpeg()[:len(m.good_jpeg()) // 2], "portrait.jpg",
            "damaged", "a JPEG cut half way"),
    _reject("image-jpeg-corrupt", "image", lambda: m.damaged(m.good_jpeg(), 1000, 500), "portrait.jpg",
            "damaged", "500 bytes of the entropy-coded data overwritten"),
    _reject("image-png-bad-crc", "image", lambda: m.damaged(m.good_png(), 100, 40), "portrait.png", "damaged",
            "a PNG chunk that fails its CRC"),
    _reject("image-webp-truncated", "image", lambda: m.image_bytes(m.portrait(), "WEBP")[:3000], "portrait.webp",
            "damaged", "a WebP cut short"),
    _reject("image-wav-named-png", "image", m.good_wav, "portrait.png", "WAV", "audio in the image part"),
    _reject("image-mp3-named-jpg", "image", m.id3_only, "portrait.jpg", "MP3", "an MP3 in the image part"),
    _reject("image-gif-animated", "image", m.animated_gif, "portrait.gif", "GIF",
            "GIF is not accepted (animated or not): 256 colours make a poor portrait"),
    _reject("image-heic", "image", lambda: b"\x00\x00\x00\x18ftypheic" + bytes(200), "IMG_0001.HEIC", "HEIC",
            "an iPhone photo: the fix says to export JPEG"),
    _reject("image-tiff", "image", lambda: m.image_bytes(m.portrait(), "TIFF"), "portrait.tif", "TIFF",
            "not a web format"),
    _reject("image-bmp", "image", lambda: m.image_bytes(m.portrait(), "BMP"), "portrait.bmp", "BMP",
            "not a web format"),
    _reject("image-svg", "image", lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="512"/>', "face.svg",
            "unknown type", "vector images are not photos"),
    _reject("image-bomb-png-100k", "image", lambda: m.png_claiming(100_000, 100_000), "portrait.png", "huge",
            "a PNG header claiming 100000x100000 (10 GP): refused before decoding"),
    _reject("image-bomb-jpeg-65k", "image", lambda: m.jpeg_claiming(65_000, 65_000), "portrait.jpg", "huge",
            "a JPEG frame header claiming 65000x65000"),
    _reject("image-over-40mp", "image", lambda: m.png_claiming(8000, 6000), "portrait.png", "40 MP limit",
            "48 MP: over the limit, refused from the header"),
    _reject("image-zero-size", "image", lambda: m.png_claiming(0, 0), "portrait.png", "damaged",
            "a PNG header claiming 0x0"),
    _reject("image-1x1", "image", lambda: m.resized_png(1, 1), "pixel.png", "short side under 256",
            "a tracking pixel"),
    _reject("image-255-short-side", "image", lambda: m.resized_png(255, 600), "portrait.png",
            "short side under 256", "one pixel under the minimum"),
    _reject("image-panorama", "image", lambda: m.resized_png(256, 4000), "banner.png", "4:1",
            "15.6:1 would become a 512 x 8000 px video"),
    _reject("image-blank", "image", m.flat_image, "portrait.png", "blank",
            "one flat colour: certainly no face (detector-independent)"),
    _reject("image-fully-transparent", "image", m.transparent_png, "portrait.png", "blank",
            "all alpha 0: flattened onto white it is blank"),
    # -- images: accepted ----------------------------------------------------------------------------------
    _accept("image-apng-animated", "image", m.apng, "portrait.png", "first frame",
            "animated PNG: the first frame is used"),
    _accept("image-cmyk-jpeg", "image", m.cmyk_jpeg, "portrait.jpg", "CMYK", "print colours, converted to RGB"),
    _accept("image-png16-rgb", "image", m.png16_rgb, "portrait.png", "16 bits", "48-bit colour reduced to 24"),
    _accept("image-png16-grey", "image", m.png16_grey, "portrait.png", "16 bits", "16-bit grey scaled to 8"),
    _accept("image-small-300", "image", lambda: m.resized_png(300, 400), "portrait.png", "under 512",
            "usable but soft"),
    _accept("image-partly-transparent", "image",
            lambda: m.image_bytes(_half_transparent(), "PNG"), "cutout.png", "transparency",
            "a cut-out portrait: flattened onto white"),
    _accept("image-jpeg-named-png", "image", m.good_jpeg, "portrait.png", None, "the content decides"),
    _accept("image-two-faces", "image", lambda: m.image_bytes(m.two_faces(), "PNG"), "class.png", None,
            "several faces: the largest is animated (chosen in the pipeline; see test_many_faces_*)"),
    _accept("image-noise-no-face", "image", lambda: m.image_bytes(_noise(), "PNG"), "noise.png", None,
            "no face but not blank: face detection runs in the pipeline (see test_no_face_*), not at submit"),
]


def _half_transparent():
    from PIL import Image

    rgba = m.portrait().convert("RGBA")
    alpha = np.full((512, 512), 255, np.uint8)
    alpha[:, :128] = 0
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def _noise():
    from PIL import Image

    return Image.fromarray(m.noise_image())


# -- requests ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestCase:
    id: str
    send: Callable[[Api], Answer]
    status: int
    field: str | None            # None: a route-level 404/405 whose detail names the path
    slug: str | None
    why: str
    echo: Callable[[Answer], None] | None = None   # accepted cases: what the job must show


def _job(**params) -> Callable[[Api], Answer]:
    return lambda api: Answer.of(api.submit(params=params))


def _param(id: str, field: str, value, why: str, slug: str = "invalid_parameter", **more) -> RequestCase:
    return RequestCase(id, _job(**{field: value}, **more), 422, field, slug, why)


def _webhook(id: str, url: str, why: str) -> RequestCase:
    return RequestCase(id, _job(webhook_url=url), 422, "webhook_url", "invalid_parameter", why)


def _json(path: str, raw: bytes, content_type: str = "application/json") -> Callable[[Api], Answer]:
    return lambda api: Answer.of(api.http.post(path, content=raw, headers={"Content-Type": content_type}))


def _keys(image_key: str | None = None, audio_key: str | None = None, **params) -> Callable[[Api], Answer]:
    """A JSON job from a real upload of the good files, with a key replaced."""
    def send(api: Api) -> Answer:
        body = api.keys_body(api.upload(), **params)
        if image_key is not None:
            body["image_key"] = image_key.format(tenant=api.tenant)
        if audio_key is not None:
            body["audio_key"] = audio_key.format(tenant=api.tenant)
        return Answer.of(api.submit_json(body))
    return send


def _upload_state(expire: bool = False, put: bool = True, audio: bytes | None = None) -> Callable[[Api], Answer]:
    def send(api: Api) -> Answer:
        upload = api.upload(audio=audio, put=put)
        if expire:
            api.expire(upload)
        return Answer.of(api.submit_json(api.keys_body(upload)))
    return send


def _multipart(parts: Callable[[Api], list[Part]], path: str = "/v1/jobs") -> Callable[[Api], Answer]:
    def send(api: Api) -> Answer:
        body, kind = multipart(parts(api))
        return Answer.of(api.http.post(path, content=body, headers={"Content-Type": kind}))
    return send


def _files(api: Api) -> list[Part]:
    return [Part("image", api.good_image, "portrait.png"), Part("audio", api.good_audio, "speech.wav")]


def _oversized_image(api: Api) -> Answer:
    big = api.good_image + bytes((25 << 20) + 1 - len(api.good_image))
    return Answer.of(api.submit(image=big))


def _content_length_lie(api: Api) -> Answer:
    body, kind = multipart(_files(api))
    return Answer.of(api.raw("POST", "/v1/jobs", {"Content-Type": kind, "Content-Length": str(300 << 20)}, body,
                             send_body=False))


def _nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def _unicode_metadata() -> dict:
    return {"course": "Физика 101 — 光学", "rtl": "\u202eevil\u202c", "zero_width": "a\u200bb", "emoji": "🎓👩‍🏫",
            "nul": "a\u0000b", "combining": "e\u0301\u0301\u0301"}


def _echoes_metadata(answer: Answer) -> None:
    assert answer.body["metadata"] == _unicode_metadata(), answer.body["metadata"]


def _preview(parts: Callable[[Api], list[Part]]) -> Callable[[Api], Answer]:
    return _multipart(parts, "/v1/preview")


def _get(path: str, auth: bool = True) -> Callable[[Api], Answer]:
    def send(api: Api) -> Answer:
        if auth:
            return Answer.of(api.http.get(path))
        return Answer.of(api.raw("GET", path, {"Authorization": None}))
    return send


def _batch(items) -> Callable[[Api], Answer]:
    return lambda api: Answer.of(api.http.post("/v1/batches", json={"items": items(api) if callable(items) else items}))


def _batch_item_problem(api: Api) -> Answer:
    """A batch whose only item names a traversal key: the batch is 202, the item carries the problem."""
    upload = api.upload()
    item = {**api.keys_body(upload), "image_key": f"uploads/{api.tenant}/../../jobs/{api.tenant}/x/image"}
    answer = Answer.of(api.http.post("/v1/batches", json={"items": [item]}))
    assert answer.status == 202, answer.body
    (only,) = answer.body["items"]
    return Answer(only["status"], "application/problem+json", only["error"], {})


UPLOAD = "uploads/{tenant}/u18c2f0a1b2cd4e5f6a7b8c9"   # a well-formed upload id that was never made
NUL = "\u0000"

REQUEST_CASES: list[RequestCase] = [
    # -- authentication and content types -------------------------------------------------------------------
    RequestCase("auth-missing", _get("/v1/jobs", auth=False), 401, "Authorization", "unauthorized",
                "no key"),
    RequestCase("auth-unknown-key", lambda api: Answer.of(api.http.get(
        "/v1/jobs", headers={"Authorization": "Bearer sk_nope_" + "x" * 40})), 401, "Authorization", "unauthorized",
        "a key nobody issued"),
    RequestCase("ctype-text-plain", _json("/v1/jobs", b"image=portrait.png", "text/plain"), 415, "Content-Type",
                "unsupported_media_type", "neither multipart nor JSON"),
    RequestCase("ctype-urlencoded", _json("/v1/jobs", b"steps=1", "application/x-www-form-urlencoded"), 415,
                "Content-Type", "unsupported_media_type", "a browser form without files"),
    RequestCase("ctype-missing", lambda api: Answer.of(api.raw("POST", "/v1/jobs", {"Content-Length": "2"}, b"{}")),
                415, "Content-Type", "unsupported_media_type", "no Content-Type at all"),
    RequestCase("ctype-uploads-multipart", _multipart(_files, "/v1/uploads"), 415, "Content-Type",
                "unsupported_media_type", "uploads take JSON, not the files"),
    # -- JSON bodies --------------------------------------------------------------------------------------
    RequestCase("json-malformed", _json("/v1/jobs", b'{"image_key": '), 400, "body", "malformed_json",
                "cut-off JSON"),
    RequestCase("json-not-utf8", _json("/v1/jobs", b'{"image_key": "\xff\xfe"}'), 400, "body", "malformed_json",
                "JSON must be UTF-8"),
    RequestCase("json-array-body", _json("/v1/jobs", b"[1, 2]"), 422, "body", "validation_error",
                "an array, not an object"),
    RequestCase("json-deeply-nested", _json("/v1/jobs", b'{"params": {"metadata": ' + _nested().encode() + b"}}"),
                400, "body", "malformed_json",
                "100000 nested arrays: the parser's recursion limit must give a 400, not a 500"),
    RequestCase("json-missing-audio-key", lambda api: Answer.of(api.submit_json({"image_key": "x"})), 422,
                "audio_key", "validation_error", "a required field left out"),
    RequestCase("json-unknown-field", lambda api: Answer.of(api.submit_json(
        {"image_key": "a", "audio_key": "b", "priority": "high"})), 422, "priority", "validation_error",
        "unknown top-level field"),
    RequestCase("json-params-not-object", lambda api: Answer.of(api.submit_json(
        {"image_key": "a", "audio_key": "b", "params": [1]})), 422, "params", "validation_error",
        "params must be an object"),
    RequestCase("json-key-wrong-type", lambda api: Answer.of(api.submit_json({"image_key": 5, "audio_key": "b"})),
                422, "image_key", "validation_error", "a number for a key"),
    RequestCase("json-key-too-long", lambda api: Answer.of(api.submit_json(
        {"image_key": "u" * 600, "audio_key": "b"})), 422, "image_key", "validation_error", "600 characters"),
    RequestCase("json-metadata-lone-surrogate", lambda api: Answer.of(api.http.post(
        "/v1/jobs", content=json.dumps(api.keys_body(api.upload(), metadata={"name": "\ud800"})).encode(),
        headers={"Content-Type": "application/json"})), 422, "metadata", None,
        'a lone UTF-16 surrogate ("\\ud800") is valid JSON but no Unicode text: it cannot be stored or echoed'),
    # -- parameters (multipart) -----------------------------------------------------------------------------
    _param("param-steps-zero", "steps", 0, "below 1"),
    _param("param-steps-101", "steps", 101, "above 100"),
    _param("param-steps-text", "steps", "abc", "not a number"),
    _param("param-steps-fraction", "steps", "1.5", "not an integer"),
    _param("param-steps-bool", "steps", "true", "a boolean is no step count"),
    _param("param-min-resolution-100", "min_resolution", 100, "not a multiple of 64"),
    _param("param-min-resolution-32", "min_resolution", 32, "below 64"),
    _param("param-seed-negative", "seed", -1, "negative"),
    _param("param-seed-2pow63", "seed", 2**63, "over 63 bits"),
    _param("param-crf-52", "crf", 52, "over H.264's 51"),
    _param("param-fps-30", "fps", 30, "only 25 or 12.5"),
    _param("param-fps-vs-interpolate", "fps", 25, "25 fps means interpolated", interpolate=False),
    _param("param-noise-strength-zero", "noise_strength", 0, "must be above 0"),
    _param("param-dynamic-scale-nan", "dynamic_scale", "nan", "NaN compares false with every bound"),
    _param("param-dynamic-scale-inf", "dynamic_scale", "inf", "infinite"),
    _param("param-expand-ratio-negative", "expand_ratio", -0.1, "negative margin"),
    _param("param-framing-unknown", "framing", "diagonal", "not a framing mode"),
    _param("param-preset-unknown", "preset", "ultra", "not a preset"),
    _param("param-face-bbox-3-numbers", "face_bbox", "1,2,3", "x,y,w,h needs four"),
    _param("param-face-bbox-negative", "face_bbox", "0,0,-5,5", "negative width"),
    _param("param-interpolate-maybe", "interpolate", "maybe", "not a boolean"),
    _param("param-metadata-not-json", "metadata", "{course: physics}", "not JSON"),
    _param("param-metadata-array", "metadata", [1, 2], "an array, not an object"),
    _param("param-metadata-too-big", "metadata", {"notes": "x" * (17 << 10)}, "over 16 KiB"),
    _param("param-unknown-field", "priority", "high", "not a job parameter"),
    _param("param-steps-alias-conflict", "inference_steps", 5, "steps and its alias disagree", steps=6),
    _param("param-duration-too-short", "duration_s", 0.05, "below the 0.2 s minimum", slug="invalid_parameter"),
    _param("param-duration-too-long", "duration_s", 5000, "over the 30 min limit", slug="invalid_parameter"),
    RequestCase("param-params-json-malformed", _multipart(lambda api: [*_files(api), Part("params", '{"steps":')]),
                422, "params", "invalid_parameter", "the params field is cut-off JSON"),
    RequestCase("param-params-json-deeply-nested", _multipart(lambda api: [*_files(api), Part("params", _nested())]),
                422, "params", "invalid_parameter", "100000 nested arrays in the params field"),
    _param("param-metadata-deeply-nested", "metadata", _nested(), "100000 nested arrays as metadata"),
    RequestCase("param-field-not-utf8", _multipart(lambda api: [*_files(api), Part("seed", b"\xff\xfe7")]), 422,
                "seed", "invalid_parameter", "a form field whose bytes are not UTF-8"),
    RequestCase("param-params-json-array", _multipart(lambda api: [*_files(api), Part("params", "[1]")]), 422,
                "params", "invalid_parameter", "the params field is an array"),
    # -- multipart structure ---------------------------------------------------------------------------------
    RequestCase("form-missing-audio", lambda api: Answer.of(api.submit(omit=("audio",))), 422, "audio",
                "validation_error", "no audio part"),
    RequestCase("form-missing-both", lambda api: Answer.of(api.submit(omit=("image", "audio"))), 422, "image",
                "validation_error", "no files at all"),
    RequestCase("form-image-as-text", _multipart(lambda api: [Part("image", "portrait.png"),
                                                              Part("audio", api.good_audio, "speech.wav")]),
                422, "image", "validation_error", "the image part has no filename: sent as a text field"),
    RequestCase("form-extra-file", lambda api: Answer.of(api.submit(extra=[Part("video", b"x", "clip.mp4")])),
                422, "video", "validation_error", "a third file"),
    RequestCase("form-oversized-image", _oversized_image, 413, "image", "payload_too_large",
                "25 MiB + 1 byte"),
    RequestCase("form-content-length-300mib", _content_length_lie, 413, "body", "payload_too_large",
                "a Content-Length of 300 MiB is refused from the header, before any body is read"),
    # -- upload keys ---------------------------------------------------------------------------------------
    RequestCase("key-traversal-in-tenant", _keys(image_key="uploads/{tenant}/../../jobs/{tenant}/x/image"), 422,
                "image_key", "invalid_key", "../ inside an upload key"),
    RequestCase("key-traversal-relative", _keys(image_key="../../etc/passwd"), 422, "image_key", "invalid_key",
                "a relative path"),
    RequestCase("key-absolute-path", _keys(audio_key="/etc/passwd"), 422, "audio_key", "invalid_key",
                "an absolute path"),
    RequestCase("key-encoded-traversal", _keys(image_key="uploads/{tenant}/%2e%2e/%2e%2e/image"), 422, "image_key",
                "invalid_key", "percent-encoded ../"),
    RequestCase("key-homoglyph-tenant", _keys(image_key=UPLOAD.replace("{tenant}", "lоcal") + "/image"), 422,
                "image_key", "invalid_key", "a Cyrillic o in the tenant"),
    RequestCase("key-nul-byte", _keys(image_key=UPLOAD + "/image" + NUL + ".png"), 422, "image_key", "invalid_key",
                "a NUL byte after the name"),
    RequestCase("key-rtl-override", _keys(audio_key=UPLOAD + "/\u202eoidua"), 422, "audio_key", "invalid_key",
                "a right-to-left override spelling 'audio' backwards"),
    RequestCase("key-emoji", _keys(image_key="uploads/🎓/u1/image"), 422, "image_key", "invalid_key", "emoji"),
    RequestCase("key-kind-swapped", _keys(audio_key=UPLOAD + "/image"), 422, "audio_key", "invalid_key",
                "an image key given as the audio"),
    RequestCase("key-other-tenant", _keys(image_key="uploads/someone-else/u18c2f0a1b2cd4e5f6a7b8c9/image"), 404,
                "image_key", "not_found", "another tenant's upload looks like no upload at all"),
    RequestCase("key-never-created", _keys(image_key=UPLOAD + "/image"), 404, "image_key", "not_found",
                "a well-formed key of an upload that does not exist"),
    RequestCase("key-expired", _upload_state(expire=True), 410, "image_key", "upload_expired",
                "an upload past its expiry"),
    RequestCase("key-nothing-uploaded", _upload_state(put=False), 422, "image_key", "upload_missing",
                "URLs handed out but nothing PUT"),
    RequestCase("key-bad-media-in-upload", _upload_state(audio=b"\x89PNG\r\n\x1a\n" + bytes(64)), 422, "audio_key",
                "invalid_media", "a PNG uploaded as the audio: the error names the request's field, audio_key"),
    RequestCase("upload-filename-too-long", lambda api: Answer.of(api.http.post(
        "/v1/uploads", json={"image": {"filename": "x" * 300}})), 422, "image.filename", "validation_error",
        "300-character file name"),
    RequestCase("upload-unknown-field", lambda api: Answer.of(api.http.post(
        "/v1/uploads", json={"image": {}, "video": {}})), 422, "video", "validation_error", "no video uploads"),
    RequestCase("upload-nothing-asked", lambda api: Answer.of(api.http.post("/v1/uploads", json={})), 422, "image",
                "validation_error", "neither image nor audio"),
    # -- accepted: names and metadata are the client's own business -------------------------------------------
    RequestCase("name-non-utf8-filename", lambda api: Answer.of(api.submit(image_name=b"portr\xe4t-\xff\xfe.png")),
                202, None, None, "a Latin-1 / invalid UTF-8 file name: names are informational, never paths"),
    RequestCase("name-traversal-filename", lambda api: Answer.of(api.submit(audio_name="../../../../etc/passwd")),
                202, None, None, "a traversal file name: inputs are stored under the job id, never the name"),
    RequestCase("metadata-odd-unicode", lambda api: Answer.of(api.submit(params={"metadata": _unicode_metadata()})),
                202, None, None, "RTL overrides, zero-width, emoji, NUL and stacked accents are echoed back as sent",
                echo=_echoes_metadata),
    # -- webhook URLs (SSRF) -------------------------------------------------------------------------------
    _webhook("webhook-ftp", "ftp://lms.example.com/hook", "not http(s)"),
    _webhook("webhook-file", "file:///etc/passwd", "a local file"),
    _webhook("webhook-javascript", "javascript:alert(1)", "not a URL to POST to"),
    _webhook("webhook-10-net", "http://10.0.0.5/hook", "private network"),
    _webhook("webhook-metadata-service", "http://169.254.169.254/latest/meta-data/", "cloud metadata endpoint"),
    _webhook("webhook-ipv6-loopback", "http://[::1]:8080/hook", "IPv6 loopback (not allow-listed)"),
    _webhook("webhook-192-168", "http://192.168.1.10/hook", "private network"),
    _webhook("webhook-172-16", "http://172.16.0.1/hook", "private network"),
    _webhook("webhook-cgnat", "http://100.64.0.1/hook", "carrier-grade NAT space"),
    _webhook("webhook-unspecified", "http://0.0.0.0/hook", "0.0.0.0 reaches the local host"),
    _webhook("webhook-v4-mapped-v6", "http://[::ffff:10.0.0.1]/hook", "a private IPv4 inside IPv6"),
    _webhook("webhook-hex-ip", "http://0xa9fea9fe/latest/meta-data/", "169.254.169.254 written in hex"),
    _webhook("webhook-credentials", "http://user:secret@127.0.0.1/hook", "credentials in the URL"),
    _webhook("webhook-no-host", "http:///hook", "no host"),
    _webhook("webhook-too-long", "https://lms.example.com/" + "a" * 2100, "over 2048 characters"),
    # -- paths and queries -------------------------------------------------------------------------------
    RequestCase("query-limit-zero", _get("/v1/jobs?limit=0"), 422, "limit", "validation_error", "below 1"),
    RequestCase("query-limit-text", _get("/v1/jobs?limit=abc"), 422, "limit", "validation_error", "not a number"),
    RequestCase("query-state-unknown", _get("/v1/jobs?state=exploded"), 422, "state", "validation_error",
                "not a job state"),
    RequestCase("query-cursor-traversal", _get("/v1/jobs?cursor=../../x"), 422, "cursor", "validation_error",
                "a cursor is a job id"),
    RequestCase("path-job-traversal", _get("/v1/jobs/..%2F..%2Fetc%2Fpasswd"), 404, None, "not_found",
                "an encoded traversal as the job id"),
    RequestCase("path-job-unicode", _get("/v1/jobs/j%E2%80%AEabc"), 404, None, "not_found", "an RTL override id"),
    RequestCase("path-unknown-job-cancel", lambda api: Answer.of(api.http.delete(
        "/v1/jobs/j18c2f0a1b2c9f3e2d1c0b4a5")), 404, None, "not_found", "cancel a job that never was"),
    RequestCase("idempotency-key-control-char", lambda api: Answer.of(api.submit(
        headers={"Idempotency-Key": "lesson\t1"})), 400, "Idempotency-Key", "bad_request",
        "a tab inside the key (valid in HTTP, not printable)"),
    RequestCase("idempotency-key-too-long", lambda api: Answer.of(api.submit(
        headers={"Idempotency-Key": "k" * 300})), 400, "Idempotency-Key", "bad_request", "300 characters"),
    # -- preview -------------------------------------------------------------------------------------------
    RequestCase("preview-json", _json("/v1/preview", b"{}"), 415, "Content-Type", "unsupported_media_type",
                "preview takes the portrait as multipart"),
    RequestCase("preview-no-image", _preview(lambda api: [Part("framing", "crop")]), 422, "image",
                "validation_error", "no image part"),
    RequestCase("preview-framing-unknown", _preview(lambda api: [Part("image", api.good_image, "p.png"),
                                                                 Part("framing", "diagonal")]),
                422, "framing", "invalid_parameter", "not a framing mode"),
    RequestCase("preview-unknown-field", _preview(lambda api: [Part("image", api.good_image, "p.png"),
                                                               Part("zoom", "2")]),
                422, "zoom", "invalid_parameter", "not a preview parameter"),
    RequestCase("preview-expand-ratio-text", _preview(lambda api: [Part("image", api.good_image, "p.png"),
                                                                   Part("expand_ratio", "wide")]),
                422, "expand_ratio", "invalid_parameter", "not a number"),
    RequestCase("preview-blank-image", _preview(lambda api: [Part("image", m.flat_image(), "p.png")]), 422, "image",
                "invalid_media", "a blank image has no face"),
    RequestCase("preview-face-bbox-outside", _preview(lambda api: [Part("image", api.good_image, "p.png"),
                                                                   Part("face_bbox", "5000,5000,100,100")]),
                422, "face", "invalid_media", "a face box outside the 512x512 image"),
    # -- batches -------------------------------------------------------------------------------------------
    RequestCase("batch-empty", _batch([]), 422, "items", "validation_error", "no items"),
    RequestCase("batch-101-items", _batch([{"image_key": "a", "audio_key": "b"}] * 101), 422, "items",
                "validation_error", "over the 100-item limit"),
    RequestCase("batch-item-wrong-type", _batch([{"image_key": ["a"], "audio_key": "b"}]), 422,
                "items[0].image_key", "validation_error", "a list for a key"),
    RequestCase("batch-item-traversal-key", _batch_item_problem, 422, "items[0].image_key", "invalid_key",
                "one bad item: the batch is accepted and the item carries the problem"),
]
