"""Qwen3-VL-shaped prompts built by hand (ids, flattened patches, grids) and the tiny shapes the multimodal parity
tests use; shared by the CPU parity suite and the GPU checks."""

import torch

IMAGE, VIDEO, AUDIO = 151655, 151656, 151675
V_START, V_END, A_START, A_END = 151652, 151653, 151669, 151670
TEXT = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    initializer_range=0.05,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3], mrope_interleaved=True),
)
VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    out_hidden_size=64,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=64,
    deepstack_visual_indexes=[0, 2],
)
AUDIO_CFG = dict(
    num_mel_bins=128,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    d_model=32,
    output_dim=64,
    downsample_hidden_size=16,
    n_window=50,
    n_window_infer=800,
)


def pixels_for(grid, seed):
    """Flattened patches [t*h*w, 3*2*16*16] for a (t, h, w) patch grid, as the image processor emits them."""
    t, h, w = grid
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t * h * w, 3 * 2 * 16 * 16, generator=g)


def vision_block(grid, token):
    t, h, w = grid
    per_frame = [V_START] + [token] * (h * w // 4) + [V_END]
    if token == IMAGE:
        return per_frame
    # Qwen3-VL separates video frames with timestamps ("<0.5 seconds>" as text tokens)
    out = []
    for frame in range(t):
        out += [27, 15 + frame, 13, 20, 6486, 29] + per_frame
    return out


def build(prompt_parts):
    """prompt_parts: list of ints (text ids) or ('image'|'video', grid). Returns ids, pixel inputs, grids."""
    ids, images, videos, image_grids, video_grids = [], [], [], [], []
    for i, part in enumerate(prompt_parts):
        if isinstance(part, tuple):
            kind, grid = part
            if kind == "image":
                ids += vision_block(grid, IMAGE)
                images.append(pixels_for(grid, i))
                image_grids.append(grid)
            else:
                ids += vision_block(grid, VIDEO)
                videos.append(pixels_for(grid, i))
                video_grids.append(grid)
        else:
            ids += part
    out = {"input_ids": torch.tensor([ids])}
    if images:
        out["pixel_values"] = torch.cat(images)
        out["image_grid_thw"] = torch.tensor(image_grids)
    if videos:
        out["pixel_values_videos"] = torch.cat(videos)
        out["video_grid_thw"] = torch.tensor(video_grids)
    return out


def mm_types(ids):
    types = torch.zeros_like(ids, dtype=torch.int)
    types[ids == IMAGE] = 1
    types[ids == VIDEO] = 2
    return types


PROMPTS = {
    "one_image": [[9707, 11, 1052], ("image", (1, 4, 6)), [3838, 374, 419, 30]],
    "two_odd_images": [[9707], ("image", (1, 6, 10)), [323], ("image", (1, 14, 4)), [3838, 30]],
    "video": [[9707], ("video", (3, 4, 4)), [3838, 30]],
    "image_and_video": [[1], ("video", (2, 4, 6)), [2, 3], ("image", (1, 4, 4)), [4]],
}
