"""Pure numerics of the engine: audio windows, image rules, scheduler, window plan, CFG, merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sonic_core.audio import BUCKET_CONTEXT, TOKEN_CONTEXT, frame_clips, num_video_frames
from sonic_core.face import FaceBox, pick_face
from sonic_core.image import expand_to_square, face_mask, generation_size, prepare_image
from sonic_core.sampler import euler_v_step, guidance, make_schedule, merge_windows, plan_windows
from sonic_core.tiny_weights import SCHEDULER_CONFIG

SVD_KARRAS_25 = [700.0, 545.73, 421.57, 322.45, 244.02, 182.55, 134.85, 98.267, 70.541, 49.810, 34.537, 23.468,
                 15.590, 10.097, 6.3543, 3.8697, 2.2691, 1.2732, 0.6781, 0.3394, 0.1574, 0.0664, 0.0248, 0.0079,
                 0.0020]


def test_audio_windows_trim_pad_and_stride():
    units = 25  # 1 s of audio -> 50 hidden states, 12 frames
    layers, channels = 3, 4
    hidden = torch.arange(60 * layers * channels, dtype=torch.float32).reshape(60, layers, channels) + 1
    last = hidden[:, -1:].clone()
    clips = frame_clips(hidden, last, units)
    assert clips.tokens.shape == (12, TOKEN_CONTEXT, layers, channels)
    assert clips.buckets.shape == (12, BUCKET_CONTEXT, 1, channels)
    # frame 0: 4 zero hidden states, then states 0..5
    assert torch.all(clips.tokens[0, :4] == 0)
    assert torch.equal(clips.tokens[0, 4:], hidden[:6])
    # frame i starts 4 hidden states later (2 units of 20 ms states)
    assert torch.equal(clips.tokens[3], hidden[8:18])
    assert torch.all(clips.buckets[0, :24] == 0)
    assert torch.equal(clips.buckets[0, 24:], last[:26])
    # trimmed to 2 * units = 50 states: the last frame ends at state 49, then zero padding
    assert torch.equal(clips.tokens[11], hidden[40:50])
    assert torch.equal(clips.buckets[11, :30], last[20:50])
    assert torch.all(clips.buckets[11, 30:] == 0)


def test_audio_frame_count_and_too_short():
    assert num_video_frames(16000) == 12          # 25 units -> 12 frames
    assert num_video_frames(16000 * 600) == 7500      # 10 min: no 400 s cap as in the reference
    assert num_video_frames(16000 * 3600) == 22500    # capped at 30 min
    with pytest.raises(ValueError, match="too short"):
        frame_clips(torch.zeros(10, 2, 2), torch.zeros(10, 1, 2), units=1)


def test_face_mask_grows_about_floored_centre():
    mask = face_mask(FaceBox(10.0, 20.0, 40.0, 60.0), width=100, height=100)
    rows, cols = np.nonzero(mask[..., 0])
    # centre (30, 50); grown 44 x 66 -> half sizes 22 and 33
    assert (cols.min(), cols.max() + 1, rows.min(), rows.max() + 1) == (8, 52, 17, 83)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    clipped = face_mask(FaceBox(-5.0, -5.0, 20.0, 20.0), width=30, height=30)
    assert clipped[0, 0, 0] == 255


@pytest.mark.parametrize(("size", "expected"), [((512, 512), (512, 512)), ((1000, 600), (832, 512)),
                                                ((600, 1000), (512, 832)), ((300, 200), (768, 512))])
def test_generation_size_is_multiple_of_64(size, expected):
    assert generation_size(*size, 512) == expected


def test_prepare_image_ranges_and_shapes():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    prepared = prepare_image(image, FaceBox(50, 60, 80, 100), min_resolution=128)
    assert prepared.ref.shape == (1, 3, 192, 128)
    assert prepared.ref.min() >= -1 and prepared.ref.max() <= 1
    assert prepared.clip.shape == (1, 3, 224, 224)
    assert prepared.mask.shape == (1, 1, 192, 128)
    assert 0 < prepared.mask.mean() < 1


def test_crop_box_is_square_and_shifted_toward_face():
    # grown box 50..250 x 0..275 (clipped at the top): a 200 px square whose centre moves from the grown
    # box's (y=137.5) to the face's (y=125), the shift being within the 37.5 px slack
    assert expand_to_square(FaceBox(100, 50, 100, 150), 0.5, width=400, height=600) == (50, 25, 250, 225)
    # clipped at the bottom instead: the square moves down to the face centre (y=475)
    assert expand_to_square(FaceBox(100, 400, 100, 150), 0.5, width=400, height=600) == (50, 375, 250, 575)


def test_pick_face_follows_reference_rule():
    small, big, medium = FaceBox(0, 0, 10, 10), FaceBox(0, 0, 30, 30), FaceBox(0, 0, 20, 20)
    assert pick_face([small, big]) == big
    assert pick_face([big, small]) == big
    # later faces are compared with the first one only: the last one larger than it wins
    assert pick_face([small, big, medium]) == medium


def test_scheduler_sigmas_are_svd_karras():
    schedule = make_schedule(SCHEDULER_CONFIG, 25)
    sigmas = [float(s.sigma) for s in schedule.steps]
    np.testing.assert_allclose(sigmas, SVD_KARRAS_25, rtol=2e-3, atol=1e-4)
    assert float(schedule.steps[-1].sigma_next) == 0.0
    for step in schedule.steps:
        assert float(step.timestep) == pytest.approx(0.25 * np.log(float(step.sigma)), abs=1e-5)


def test_noise_strength_keeps_last_steps():
    schedule = make_schedule(SCHEDULER_CONFIG, 10, noise_strength=0.5)
    assert len(schedule.steps) == 5
    assert [s.index for s in schedule.steps] == list(range(5))
    assert float(schedule.sigma_start) < 700


def test_window_plan_wraps_and_shifts():
    assert plan_windows(50, 0) == [list(range(25)), list(range(25, 50))]
    step1 = plan_windows(50, 1)
    assert step1[0] == [(j - 7) % 50 for j in range(25)]
    assert step1[0][0] == 43 and step1[0][7] == 0
    # last window wraps around for lengths that are not multiples of 25
    assert plan_windows(30, 0)[1] == [25, 26, 27, 28, 29] + list(range(20))
    # fewer frames than a window: indices repeat inside the window
    short = plan_windows(10, 2)
    assert len(short) == 1 and len(short[0]) == 25 and short[0][0] == (-14) % 10
    # no overlap between windows of one step when length is a multiple of 25
    flat = [f for w in plan_windows(75, 3) for f in w]
    assert sorted(flat) == list(range(75))


def test_cfg_formula():
    u, da, c = torch.tensor(1.0), torch.tensor(3.0), torch.tensor(4.0)
    assert guidance(u, da, c, 2.0, 7.5) == pytest.approx(1 + 2 * 2 + 7.5 * 1)
    # with all branches equal, guidance is the identity
    x = torch.randn(4)
    torch.testing.assert_close(guidance(x, x, x, 2.0, 7.5), x)


def test_euler_step_matches_diffusers_scheduler():
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    scheduler.set_timesteps(5)
    sample, v = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 3, 4, 8, 8)
    for i, t in enumerate(scheduler.timesteps):
        scheduler._step_index = None
        scheduler.scale_model_input(sample, t)
        expected = scheduler.step(v, t, sample).prev_sample
        ours = euler_v_step(sample, v, scheduler.sigmas[i], scheduler.sigmas[i + 1])
        assert torch.equal(ours, expected)


def test_merge_averages_by_count():
    windows = [[0, 1, 2, 0], [2, 3, 4, 4]]
    results = [torch.tensor([1.0, 2.0, 3.0, 5.0]).view(1, 4, 1, 1, 1),
               torch.tensor([7.0, 8.0, 9.0, 11.0]).view(1, 4, 1, 1, 1)]
    merged = merge_windows(5, windows, results).flatten().tolist()
    assert merged == [3.0, 2.0, 5.0, 8.0, 10.0]
