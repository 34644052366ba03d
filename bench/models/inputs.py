"""Real inputs for the benchmark models: photo crops and English sentences.

Random tensors hide numeric problems (saturating activations, all-padding masks) that real data
shows, so benchmarks and accuracy checks feed these instead. Photos come from scikit-image and
scikit-learn, which ship them in their wheels; nothing is downloaded.

int8 accuracy (bench/bench_int8.py) uses a split by source photo, `split_crops(role)`: crops of
one photo are correlated, so no photo serves two roles.
- evaluation: 8 photos x 8 crops = 64 (the ImageNet-like ones): astronaut, coffee, chelsea,
  rocket, china, flower, motorcycle (left view), hubble_deep_field.
- calibration: 8 other photos x 4 crops = 32: retina, colorwheel, camera, coins, brick, gravel,
  clock, cell (grayscale ones repeated to RGB).
- validation: 6 more photos x 8 crops = 48, for any choice made in the int8 flow (calibration
  method, fp32 layers, ...), never the evaluation photos: immunohistochemistry, logo, moon,
  grass, page, text.
The motorcycle's right view (skimage's stereo pair) is the same scene as the left one and is in
no role besides evaluation.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from .export import SEQ_LEN, minilm_dir

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CROP = 224

# Photos, most ImageNet-like first, so small batches hold recognisable objects.
PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "china",
    "flower",
    "motorcycle",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
]

# (name, shorter side after resize, crop centre as a fraction of the slack, mirror).
# The first is torchvision's standard evaluation transform (resize 256, centre crop 224).
VARIANTS = [
    ("center256", 256, (0.5, 0.5), False),
    ("center256-flip", 256, (0.5, 0.5), True),
    ("full224", 224, (0.5, 0.5), False),
    ("zoom320", 320, (0.5, 0.5), False),
    ("topleft288", 288, (0.2, 0.2), False),
    ("bottomright288-flip", 288, (0.8, 0.8), True),
]

MAX_IMAGES = len(PHOTOS) * len(VARIANTS)

# The int8 accuracy split (module docstring): role -> (photos, crop variants).
EVAL_VARIANTS = [
    *VARIANTS,
    ("topright288", 288, (0.8, 0.2), False),
    ("bottomleft288-flip", 288, (0.2, 0.8), True),
]
CALIB_VARIANTS = [
    ("center256", 256, (0.5, 0.5), False),
    ("zoom320-flip", 320, (0.3, 0.6), True),
    ("corner288", 288, (0.8, 0.2), False),
    ("full224-flip", 224, (0.5, 0.5), True),
]
SPLIT = {
    "evaluation": (
        ["astronaut", "coffee", "chelsea", "rocket", "china", "flower", "motorcycle"]
        + ["hubble_deep_field"],
        EVAL_VARIANTS,
    ),
    "calibration": (
        ["retina", "colorwheel", "camera", "coins", "brick", "gravel", "clock", "cell"],
        CALIB_VARIANTS,
    ),
    "validation": (
        ["immunohistochemistry", "logo", "moon", "grass", "page", "text"],
        EVAL_VARIANTS,
    ),
}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "She finished reading the novel in a single afternoon.",
    "How do I reset my password if I no longer have access to my email?",
    "The restaurant was crowded, but the food was worth the wait.",
    "Scientists have discovered a new species of frog in the Amazon rainforest.",
    "It was the best of times, it was the worst of times.",
    "Please remember to turn off the lights when you leave the office.",
    "The train to Edinburgh was delayed by forty minutes because of a signal failure.",
    "Children were building sandcastles on the beach while their parents watched.",
    "Regular exercise improves both physical health and mental well-being.",
    "The committee will announce its decision at the end of the month.",
    "My laptop battery drains much faster since the last software update.",
    "A cat is sleeping on a warm windowsill in the afternoon sun.",
    "The museum's new exhibition explores the history of early photography.",
    "Heavy rain is expected across the northern region this weekend.",
    "He apologised for missing the meeting and promised to send a summary.",
    "Learning a second language can take years of patient practice.",
    "The bridge was closed to traffic while engineers inspected the damage.",
    "Fresh bread and strong coffee are the best way to start the day.",
    "The company plans to open three new factories in the next two years.",
    "The astronaut waved to the crowd before boarding the rocket.",
    "Can you recommend a good book about the history of mathematics?",
]


def _photo(name: str) -> np.ndarray:
    """An RGB uint8 photo by name (scikit-image data, or scikit-learn's sample images)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    img = getattr(skimage.data, name)()
    if img.ndim == 2:  # grayscale: the same values in R, G and B
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])  # logo is RGBA


def _crop(rgb: np.ndarray, short: int, centre: tuple[float, float], mirror: bool) -> np.ndarray:
    """Resize the shorter side to ``short`` (PIL bilinear, as torchvision does), crop 224x224."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = short / min(h, w)
    size = (max(CROP, round(w * scale)), max(CROP, round(h * scale)))
    img = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    top = round((img.shape[0] - CROP) * centre[1])
    left = round((img.shape[1] - CROP) * centre[0])
    img = img[top : top + CROP, left : left + CROP]
    return img[:, ::-1] if mirror else img


def _normalize(img: np.ndarray) -> np.ndarray:
    """HWC uint8 -> [1, 3, 224, 224] float32 with ImageNet mean/std."""
    x = (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@functools.cache
def _all_crops() -> tuple[tuple[str, np.ndarray], ...]:
    photos = {name: _photo(name) for name in PHOTOS}
    crops = []
    for variant, short, centre, mirror in VARIANTS:
        for name, rgb in photos.items():
            x = _normalize(_crop(rgb, short, centre, mirror))
            x.setflags(write=False)
            crops.append((f"{name}/{variant}", x))
    return tuple(crops)


def image_crops(n: int) -> list[tuple[str, np.ndarray]]:
    """The first ``n`` (name, [1,3,224,224] float32) crops: every photo once before any repeats."""
    if not 0 <= n <= MAX_IMAGES:
        raise ValueError(f"n must be in [0, {MAX_IMAGES}], got {n}")
    return list(_all_crops()[:n])


@functools.cache
def _split_crops(role: str) -> tuple[tuple[str, np.ndarray], ...]:
    photos, variants = SPLIT[role]
    crops = []
    for name in photos:
        rgb = _photo(name)
        for variant, short, centre, mirror in variants:
            x = _normalize(_crop(rgb, short, centre, mirror))
            x.setflags(write=False)
            crops.append((f"{name}/{variant}", x))
    return tuple(crops)


def split_crops(role: str) -> list[tuple[str, np.ndarray]]:
    """(name, [1,3,224,224] float32) crops of one role of the int8 split: "evaluation",
    "calibration" or "validation" (module docstring); photo by photo."""
    if role not in SPLIT:
        raise ValueError(f"role must be one of {', '.join(SPLIT)}, got {role!r}")
    return list(_split_crops(role))


def split_photos() -> dict[str, dict]:
    """The split as recorded in results: role -> photos, crop variants, crop count."""
    return {
        role: {
            "photos": list(photos),
            "variants": [v[0] for v in variants],
            "crops": len(photos) * len(variants),
        }
        for role, (photos, variants) in SPLIT.items()
    }


def image_batch(n: int) -> list[np.ndarray]:
    """``n`` distinct ImageNet-preprocessed photo crops, each [1, 3, 224, 224] float32."""
    return [x for _, x in image_crops(n)]


@functools.lru_cache(maxsize=1)
def _tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def tokenize(sentence: str) -> dict[str, np.ndarray]:
    """MiniLM's WordPiece ids and mask, padded/truncated to [1, 128] int64."""
    enc = _tokenizer()(
        sentence, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np"
    )
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def sentence_batch(n: int) -> list[dict[str, np.ndarray]]:
    """The first ``n`` sentences as MiniLM inputs (``input_ids``, ``attention_mask``)."""
    if not 0 <= n <= len(SENTENCES):
        raise ValueError(f"n must be in [0, {len(SENTENCES)}], got {n}")
    return [tokenize(s) for s in SENTENCES[:n]]
