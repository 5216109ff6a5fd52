"""Qwen3-Multimodal's special tokens and their ids: the one home of both (Hub file; imports nothing).

The tokenizer builder, the config's defaults, the processor, the converter's metadata and the tools all read them
here; tests write the ids out independently (from Qwen's own tokenizer_config.json files) and compare.
"""

# (id, content, special) for every added token. 151643-151668: Qwen3's tokenizer_config.json added_tokens_decoder
# (tool/FIM/think markers are special=False: they survive `skip_special_tokens`). 151669-151675: Qwen3-Omni's audio
# and TTS tokens; without them `<|audio_pad|>` would not be 151675.
ADDED_TOKENS = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
    (151669, "<|audio_start|>", True),
    (151670, "<|audio_end|>", True),
    (151671, "<tts_pad>", True),
    (151672, "<tts_text_bos>", True),
    (151673, "<tts_text_eod>", True),
    (151674, "<tts_text_bos_single>", True),
    (151675, "<|audio_pad|>", True),
)

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 131072  # Qwen3's tokenizer_config.json (the 2507 releases say 262144)

_ID = {content: token_id for token_id, content, _ in ADDED_TOKENS}

IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN = "<|image_pad|>", "<|video_pad|>", "<|audio_pad|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
AUDIO_START, AUDIO_END = "<|audio_start|>", "<|audio_end|>"

ENDOFTEXT_ID = _ID["<|endoftext|>"]  # Qwen3's bos/pad id
IM_START_ID = _ID["<|im_start|>"]
IM_END_ID = _ID["<|im_end|>"]  # the end of every chat turn: Qwen3's eos
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, AUDIO_TOKEN_ID = _ID[IMAGE_TOKEN], _ID[VIDEO_TOKEN], _ID[AUDIO_TOKEN]
VISION_START_ID, VISION_END_ID = _ID[VISION_START], _ID[VISION_END]
AUDIO_START_ID, AUDIO_END_ID = _ID[AUDIO_START], _ID[AUDIO_END]
