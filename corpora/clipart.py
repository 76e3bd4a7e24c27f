"""A development corpus from real public-domain media that Debian ships.

``make_corpus(out_dir, n_items=1200, seed=0)`` writes the same layout as the demo corpus::

    out_dir/corpus.jsonl        one product per line (format: scalemm/corpus.py)
    out_dir/images/<id>.jpg     the product's picture as a seller photographed it
    out_dir/videos/<id>.mp4     H.264 128x128, 24 fps, 3-7 s, AAC mono 16 kHz sound track
    out_dir/audio/<id>.wav      16-bit PCM mono 16 kHz: the spoken product name (about half)
    out_dir/corpus_stats.json   counts per modality, category sizes, listings, wrong-title ids
    out_dir/sources.jsonl       per product: the clipart file it shows, its listing number, the
                                file a wrong title came from (not read by the extraction)

Products are the pictures of ``openclipart-png`` (``/usr/share/openclipart/png``) in a given
list of categories (``DEFAULT_CATEGORIES``; the other categories are kept for an independent
check). A product's label is its category path (``food/vegetables``); a picture found in
several of the chosen categories (the AIGA symbols are also map symbols) belongs to the first
of them in the list, so no picture carries two labels. Speech is made by ``espeak-ng``.

What each modality carries (category signal / instance signal / nuisance). The knobs are the
module constants. Measured on the default corpus (1,200 products, seed 0, configs/offline.yaml,
frozen pooled features, coarse / fine mAP@1 over all products): title 70.0 / 34.2, image
61.1 / 34.4, video 35.6 / 5.3, table 23.2 / 1.3, audio 15.3 / 0.2, concat_frozen 76.1 / 33.7.

- title (strongest, noisy): the picture's real file name, cleaned (separators, CamelCase,
  numbering suffixes), which often names the object and sometimes only an author or a code;
  seller noise (``TITLE_NOISE``): boilerplate, product-type words unrelated to the category
  (sticker, poster, ...), a colour, a SKU code, a dropped word, a typo, casing.
  ``WRONG_TITLE_RATE`` of the products carry a wrong title: the file name of a product of
  another category (``wrong_title_ids`` in the stats, the file in ``sources.jsonl``).
- image (strong): the picture itself as a seller's photo (``IMAGE_NUISANCE``): white, pale
  or busy background, other stock as props, a random scale (sometimes cut by the frame),
  rotation, lighting, a sale badge, low-resolution uploads, JPEG quality.
- video (medium): a low-resolution clip (``VIDEO_NUISANCE``: rendered at 48-112 px, shown at
  128 px) of the shop's shelf, the product among other stock (any chosen category) while the
  camera pans past it, or a slideshow in which the product is one slide of two to four.
- table (uneven): mostly keys with nothing to say about the category (shipping, warranty,
  stock, SKU, EAN, material, product type, ...); a department key (a shop department shared
  by several categories, ``DEPARTMENTS``) in some listings and sometimes wrong; facts read off
  the picture (main colour, colour style, format); rarely ``tags`` with words of the name.
- audio (weak): ``espeak-ng`` speaking the product's own name (also when its title is wrong)
  under noise, hum and a music bed: a standalone WAV for about half of the products, else
  mixed into the video's sound track (louder music there). Log-mel features hear the voice
  and the music, not the words.
- sellers: every listing comes from a shop, a specialist of its category
  (``SPECIALIST_SHARE``) or a general one. A shop records in its own voice and over its own
  jingle some of the time (``SHOP_VOICE``, ``SHOP_JINGLE``) and fills tables from its own
  template (two fixed keys, key casing): the weak category signal of audio and table.
- second listings: ``LISTED_TWICE`` of the instances are listed twice, by another shop, with
  another photo of the same picture, a differently noised title, another voice, another video
  and a table that shares only what the picture shows.
- missing modalities: ``MISSING_RATE`` of the products lack one or two modalities, with
  different odds per modality (``DROP_WEIGHTS``); a product without audio has no video either
  (every video has a sound track).

Deterministic by seed: the plan comes from one generator seeded with ``seed``; every product
from its own generator seeded with ``(seed, index)``, so products are made in parallel and
the output does not depend on the number of workers (byte-identical files given the same
Pillow, PyAV/x264 and espeak-ng builds).
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from scalemm.errors import UserError
from scalemm.modalities import MODALITIES

from .listing import BOILER_PRE, BOILER_SUF, NOISE_KEYS, background, light, paste, place, seller_case
from .media import AUDIO_SR, FPS, VIDEO_SIZE, wav_bytes, write_video
from .writer import CorpusKind, check_request, finish, make_products, seeded_rng, write_jsonl

DEFAULT_ROOT = Path("/usr/share/openclipart/png")
DEBIAN_PACKAGES = ("openclipart-png", "espeak-ng")
ESPEAK = "espeak-ng"
DEFAULT_CATEGORIES: tuple[str, ...] = (
    "signs_and_symbols/flags", "transportation/roadsigns", "transportation/aiga-symbols",
    "signs_and_symbols/map_symbols", "recreation/party", "people/stickmen", "shapes/jigsaw", "people/smilies",
    "recreation/holiday", "people/bodypart", "signs_and_symbols/weather", "recreation/religion",
    "geography/astronomy", "science/astronomy", "recreation/games", "plants/trees", "animals/dinosaurs",
    "food/vegetables", "electronics/bulb", "computer/folders", "buildings/furniture", "signs_and_symbols/money",
    "signs_and_symbols/led",
)
DEFAULT_ITEMS = 1200

SOURCES_FILE = "sources.jsonl"

# the plan (exact counts, rounded)
LISTED_TWICE = 0.30        # share of instances listed twice
MISSING_RATE = 0.20        # products missing one or two modalities
DROP_WEIGHTS = {"image": 0.10, "text": 0.08, "table": 0.32, "video": 0.32, "audio": 0.18}
WRONG_TITLE_RATE = 0.06    # products whose title is another category's file name
STANDALONE_AUDIO_RATE = 0.5
PHOTO_REUSE = 0.25         # second listings that show the first listing's photo again, re-encoded
DISTRACTOR_POOL = 160      # pictures the shop videos draw their distractors from
SPECIALIST_SHARE = 0.55    # listings sold by a shop that specialises in the category (else a general shop)
GENERAL_SHOPS = 12
INSTANCES_PER_SHOP = 50    # a category has 1 + instances // this specialist shops
SHOP_VOICE, SHOP_JINGLE = 0.3, 0.3  # recordings in the shop's voice, over the shop's jingle (else any)

# pictures usable as products (read from the PNG header, before any pixel)
MIN_SIDE, MIN_LONG_SIDE, MAX_PIXELS, MAX_ASPECT = 16, 64, 16_000_000, 6.0
PICTURE_MAX = 384          # pictures are kept at most this large (longer side) once loaded

# shop departments, by the clipart's top-level folder (shared by several categories)
DEPARTMENTS: dict[str, str] = {
    "signs_and_symbols": "Signs & Symbols", "logos": "Signs & Symbols",
    "transportation": "Travel & Transport",
    "recreation": "Toys, Games & Party", "shapes": "Toys, Games & Party",
    "people": "Stickers & Emoji",
    "geography": "Science & Education", "science": "Science & Education", "education": "Science & Education",
    "animals": "Nature & Garden", "plants": "Nature & Garden", "food": "Nature & Garden",
    "buildings": "Home & Office", "containers": "Home & Office", "decorations": "Home & Office",
    "tools": "Home & Office", "computer": "Home & Office", "electronics": "Home & Office",
    "office": "Home & Office", "buttons": "Home & Office",
    "special": "Other", "unsorted": "Other",
}
P_DEPARTMENT, P_WRONG_DEPARTMENT, P_TAGS = 0.50, 0.12, 0.15

# nuisance in the product photos: share with props, product scale range, share cut by the
# frame, share uploaded at low resolution
IMAGE_NUISANCE: dict[str, Any] = {"props": 0.65, "scale": (0.28, 0.75), "cut": 0.35, "low_res": 0.65}
# the shop videos: camera resolutions, product size (share of the frame), distractors, slideshow share
VIDEO_NUISANCE: dict[str, Any] = {"resolution": [48, 64, 80, 96, 112], "size": (0.45, 0.75),
                                  "distractors": (3, 7), "slideshow": 0.3, "slides": (2, 5), "scene": (1.6, 2.4)}
# seller noise in titles: probabilities, and the odds of 0, 1 or 2 boilerplate phrases before / after
TITLE_NOISE: dict[str, Any] = {"drop_word": 0.1, "typo": 0.12, "product_type": 0.12, "colour": 0.1, "sku": 0.12,
                               "prefixes": [0.9, 0.08, 0.02], "suffixes": [0.9, 0.08, 0.02]}
PRODUCT_TYPES = ["sticker", "vinyl decal", "wall sticker", "poster", "art print", "clipart", "icon", "fridge magnet",
                 "iron-on patch", "t-shirt print", "png", "vector graphic", "canvas print", "greeting card",
                 "keychain", "enamel pin", "mug print", "mouse pad"]
TABLE_NOISE: dict[str, list[str]] = {
    "material": ["vinyl", "paper", "PVC", "canvas", "cotton", "ceramic", "acrylic", "metal", "n/a"],
    "finish": ["matte", "glossy", "satin", "laminated", "n/a"],
    "product type": PRODUCT_TYPES,
    "quantity": ["1", "1 pc", "2 pcs", "5 pcs", "10 pcs", "set of 3"],
    "condition": ["new", "brand new", "new with tags"],
    "sku": [],  # filled with a random code
    "ean": [],  # filled with a random number
    "license": ["public domain", "CC0", "royalty free", "personal use"],
}
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VOICE_VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt", "+croak"]
SPOKEN_EXTRAS = ["new", "best price", "order now", "available today", "top quality", "free delivery"]


class ClipartCorpusError(UserError, ValueError):
    """A user error: bad arguments, a folder that cannot be used, missing packages."""


class MissingPackagesError(ClipartCorpusError):
    """The Debian packages with the media (openclipart-png) or the voice (espeak-ng) are absent."""


CLIPART = CorpusKind("clipart", generator="scale-clipart-corpus", version=1, error=ClipartCorpusError,
                     extra_files=(SOURCES_FILE,))


# --------------------------------------------------------------------------- packages and pictures


def check_packages(root: str | Path = DEFAULT_ROOT) -> None:
    """Raise ``MissingPackagesError`` (one message naming the packages and the apt-get command)
    when the clipart pictures or ``espeak-ng`` are missing."""
    missing = []
    if not Path(root).is_dir():
        if Path(root) != DEFAULT_ROOT:
            raise MissingPackagesError(f"clipart root {root} is not a directory; give the folder of the openclipart "
                                       f"PNGs (the Debian package openclipart-png installs {DEFAULT_ROOT})")
        missing.append("openclipart-png")
    if shutil.which(ESPEAK) is None:
        missing.append("espeak-ng")
    if missing:
        raise MissingPackagesError(
            f"the clipart corpus needs the Debian packages {', '.join(DEBIAN_PACKAGES)} (missing: "
            f"{', '.join(missing)}); install them with: sudo apt-get install -y {' '.join(DEBIAN_PACKAGES)}")


def _usable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Exception:  # noqa: BLE001 - a picture the header reader refuses is not used
        return False
    return (min(w, h) >= MIN_SIDE and max(w, h) >= MIN_LONG_SIDE and w * h <= MAX_PIXELS
            and max(w, h) / min(w, h) <= MAX_ASPECT)


def scan_pictures(root: str | Path, categories: Sequence[str]) -> list[list[str]]:
    """Per category, the usable pictures (paths relative to ``root``, sorted), each picture in
    one category only: a file whose content is already in an earlier category (or earlier in
    the same one) is left out."""
    root = Path(root)
    seen: set[str] = set()
    out: list[list[str]] = []
    for cat in categories:
        folder = root / cat
        if not folder.is_dir():
            raise ClipartCorpusError(f"category {cat!r} is not a folder under {root}")
        files = []
        for p in sorted(folder.rglob("*.png")):
            digest = hashlib.md5(p.read_bytes()).hexdigest()
            if digest in seen or not _usable(p):
                continue
            seen.add(digest)
            files.append(p.relative_to(root).as_posix())
        if not files:
            raise ClipartCorpusError(f"category {cat!r} has no usable PNG under {root}")
        out.append(files)
    return out


def department(category: str) -> str:
    top = category.split("/", 1)[0]
    return DEPARTMENTS.get(top, top.replace("_", " ").title())


# --------------------------------------------------------------------------- names


def clean_name(stem: str) -> str:
    """A title from a clipart file name: separators to spaces, CamelCase split, numbering
    suffixes dropped (``aiga_barber_shop1`` -> ``aiga barber shop``, ``smiley105`` -> ``smiley``,
    ``folder_01`` -> ``folder``)."""
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    s = re.sub(r"[_\-.]+", " ", s)
    words = s.split()
    while len(words) > 1 and words[-1].isdigit():
        words.pop()
    if len(words) > 0 and not words[-1].isdigit():
        last = re.sub(r"(?<=[A-Za-z])\d+$", "", words[-1])
        words[-1] = last or words[-1]
    name = " ".join(words).strip()
    return name or stem


# --------------------------------------------------------------------------- planning


def _allocate(available: list[int], n_instances: int, rng: np.random.Generator) -> list[int]:
    """Instances per category: every category gets min(available, cap) with the largest cap that
    fits, the rest go one by one to random categories that still have pictures (long tail kept,
    head capped)."""
    avail = np.array(available)
    cap = 0
    while cap < avail.max() and np.minimum(avail, cap + 1).sum() <= n_instances:
        cap += 1
    sizes = np.minimum(avail, cap)
    left = n_instances - int(sizes.sum())
    if left:
        more = np.flatnonzero(avail > sizes)
        for c in rng.choice(more, size=left, replace=False):
            sizes[int(c)] += 1
    return [int(s) for s in sizes]


def _shop(rng: np.random.Generator, sid: str) -> dict[str, Any]:
    """A seller: its recording voice, its jingle (a chord), its table template."""
    voice, speed, pitch = _voice(rng)
    keys = [str(k) for k in rng.choice(list(NOISE_KEYS) + ["material", "finish", "license", "condition"], size=2,
                                       replace=False)]
    template = [(k, str(rng.choice(NOISE_KEYS.get(k) or TABLE_NOISE[k]))) for k in keys]
    return {"id": sid, "voice": [voice, speed, pitch], "jingle_root": int(rng.integers(0, 24)),
            "jingle_chord": [float(r) for r in rng.choice([1.0, 1.2, 1.25, 1.5, 2.0, 2.5, 3.0], size=3, replace=False)],
            "key_case": str(rng.choice(["plain", "plain", "title", "upper"])), "template": template}


def plan_corpus(n_items: int, seed: int, categories: Sequence[str] = DEFAULT_CATEGORIES,
                root: str | Path = DEFAULT_ROOT) -> list[dict[str, Any]]:
    """The catalogue plan, without media: one spec per product, in corpus order.

    A spec holds ``index``, ``id``, ``category`` (index into ``categories``), ``label``,
    ``instance`` (opaque id), ``listing`` (1 or 2), ``source`` (picture, relative to ``root``),
    ``name`` (its cleaned file name), ``wrong_source`` / ``wrong_name`` (a wrong title's file,
    else None), ``missing``, ``standalone_audio``, ``shop`` (the seller: voice, jingle, table
    template), ``distractors`` (pictures for the video and props for the photo) and
    ``photo_of`` (None, or the first listing's index and props when its photo is reused).
    The steps draw from one generator, in this order.
    """
    cats = list(categories)
    if not cats:
        raise ClipartCorpusError("no categories given")
    if len(set(cats)) != len(cats):
        raise ClipartCorpusError("a category is given twice")
    pics = scan_pictures(root, cats)
    rng = seeded_rng(seed, 0)
    sizes = _allocate([len(p) for p in pics], _instance_count(n_items, cats, pics), rng)
    specs = _plan_listings(n_items, cats, pics, sizes, rng)
    _plan_missing(specs, rng)
    _plan_wrong_titles(specs, rng)
    _plan_audio(specs, rng)
    _plan_shops(specs, sizes, rng)
    _plan_distractors(specs, pics, rng)
    _plan_photo_reuse(specs, rng)
    return specs


def _instance_count(n_items: int, cats: list[str], pics: list[list[str]]) -> int:
    """How many pictures become products (``LISTED_TWICE`` of them listed twice); an error when
    the categories hold too few pictures, or the products are too few for the categories."""
    n_inst = int(np.ceil(n_items / (1 + LISTED_TWICE)))
    total = sum(len(p) for p in pics)
    if n_inst > total:
        n_inst = total
    if n_items > 2 * n_inst:
        raise ClipartCorpusError(f"these categories hold {total} usable pictures: at most {2 * total} products")
    if n_inst < len(cats):
        raise ClipartCorpusError(f"{n_items} products are too few for {len(cats)} categories "
                                 f"(at least {int(np.ceil(len(cats) * (1 + LISTED_TWICE)))})")
    return n_inst


def _plan_listings(n_items: int, cats: list[str], pics: list[list[str]], sizes: list[int],
                   rng: np.random.Generator) -> list[dict[str, Any]]:
    """One blank spec per product: ``sizes[c]`` pictures of category c as instances, some listed
    twice, the listings shuffled."""
    instances: list[tuple[int, str]] = []
    for c, (files, k) in enumerate(zip(pics, sizes)):
        for j in sorted(rng.choice(len(files), size=k, replace=False)):
            instances.append((c, files[int(j)]))
    twice = set(int(i) for i in rng.choice(len(instances), size=n_items - len(instances), replace=False))
    inst_ids = rng.permutation(len(instances))  # instance ids do not reveal the category
    listings = [(i, 1) for i in range(len(instances))] + [(i, 2) for i in sorted(twice)]
    order = rng.permutation(len(listings))
    specs: list[dict[str, Any]] = []
    width = max(5, len(str(n_items - 1)))
    for idx in range(n_items):
        i, listing = listings[int(order[idx])]
        c, src = instances[i]
        specs.append(dict(index=idx, id=f"p{idx:0{width}d}", category=c, label=cats[c],
                          instance=f"i{int(inst_ids[i]):0{width}d}", listing=listing, source=src,
                          name=clean_name(Path(src).stem), wrong_source=None, wrong_name=None,
                          missing=[], standalone_audio=False, shop=None, distractors=[], photo_of=None))
    return specs


def _plan_missing(specs: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Missing modalities: one (80%) or two, with modality odds; no audio means no video."""
    mods = list(DROP_WEIGHTS)
    p = np.array([DROP_WEIGHTS[m] for m in mods])
    n_items = len(specs)
    for i in sorted(int(x) for x in rng.choice(n_items, size=int(round(MISSING_RATE * n_items)), replace=False)):
        k = 1 if rng.random() < 0.8 else 2
        drop = {str(m) for m in rng.choice(mods, size=k, replace=False, p=p / p.sum())}
        if "audio" in drop:
            drop.add("video")
        specs[i]["missing"] = sorted(drop)


def _plan_wrong_titles(specs: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Wrong titles: the file name of a product of another category."""
    titled = [s for s in specs if "text" not in s["missing"]]
    n_wrong = min(len(titled), int(round(WRONG_TITLE_RATE * len(specs))))
    for t in sorted(int(x) for x in rng.choice(len(titled), size=n_wrong, replace=False)):
        s = titled[t]
        others = [o for o in specs if o["category"] != s["category"]]
        if not others:
            continue
        o = others[int(rng.integers(len(others)))]
        s["wrong_source"], s["wrong_name"] = o["source"], o["name"]


def _plan_audio(specs: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Audio: a standalone WAV, or the video's sound track."""
    for s in specs:
        if "audio" in s["missing"]:
            continue
        s["standalone_audio"] = "video" in s["missing"] or bool(rng.random() < STANDALONE_AUDIO_RATE)


def _plan_shops(specs: list[dict[str, Any]], sizes: list[int], rng: np.random.Generator) -> None:
    """The sellers: specialist shops per category and general shops, each with its own voice,
    jingle and table template; the two listings of an instance come from different shops."""
    shops = [_shop(rng, f"s{j:02d}") for j in range(GENERAL_SHOPS)]
    specialists: list[list[dict[str, Any]]] = []
    for c, k in enumerate(sizes):
        own = [_shop(rng, f"s{len(shops) + j:02d}") for j in range(1 + k // INSTANCES_PER_SHOP)]
        shops += own
        specialists.append(own)
    first_shop: dict[str, str] = {}
    for s in sorted(specs, key=lambda s: s["listing"]):
        for _ in range(10):
            pool_ = specialists[s["category"]] if rng.random() < SPECIALIST_SHARE else shops[:GENERAL_SHOPS]
            shop = pool_[int(rng.integers(len(pool_)))]
            if first_shop.get(s["instance"]) != shop["id"]:
                break
        s["shop"] = shop
        first_shop.setdefault(s["instance"], shop["id"])


def _plan_distractors(specs: list[dict[str, Any]], pics: list[list[str]], rng: np.random.Generator) -> None:
    """The shop's other stock, shown around the product in its video."""
    every = [f for files in pics for f in files]
    pool = [every[int(j)] for j in rng.choice(len(every), size=min(DISTRACTOR_POOL, len(every)), replace=False)]
    for s in specs:
        cand = [f for f in pool if f != s["source"]]
        s["distractors"] = [cand[int(j)] for j in rng.choice(len(cand), size=min(7, len(cand)), replace=False)]


def _plan_photo_reuse(specs: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Some second listings reuse the first listing's photo (the same shot, another upload)."""
    first = {s["instance"]: s for s in specs if s["listing"] == 1}
    for s in specs:
        if s["listing"] == 2 and rng.random() < PHOTO_REUSE:
            s["photo_of"] = {"index": first[s["instance"]]["index"], "props": first[s["instance"]]["distractors"][-2:]}


# --------------------------------------------------------------------------- pictures


@lru_cache(maxsize=256)
def _picture(root: str, rel: str) -> Image.Image:
    """The clipart as RGBA, at most ``PICTURE_MAX`` px on its longer side."""
    with Image.open(Path(root) / rel) as im:
        rgba = im.convert("RGBA")
    rgba.thumbnail((PICTURE_MAX, PICTURE_MAX), Image.LANCZOS)
    if rgba.getchannel("A").getextrema()[1] == 0:  # fully transparent: show the colour channels
        rgba.putalpha(255)
    return rgba


def _square(pic: Image.Image) -> Image.Image:
    """The picture centred on a transparent square (``_place`` wants a square sprite)."""
    s = max(pic.size)
    sq = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    sq.paste(pic, ((s - pic.width) // 2, (s - pic.height) // 2))
    return sq


def picture_facts(pic: Image.Image) -> dict[str, str]:
    """What a seller could read off the picture: its main colour, colour style and format."""
    small = pic.copy()
    small.thumbnail((64, 64))
    a = np.asarray(small, np.float32) / 255.0
    alpha = a[..., 3] > 0.5
    rgb = a[..., :3][alpha] if alpha.any() else a[..., :3].reshape(-1, 3)
    mx, mn = rgb.max(1), rgb.min(1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    coloured = (sat > 0.25) & (mx > 0.2)
    w, h = pic.size
    fmt = "square" if 0.85 <= w / h <= 1.18 else ("landscape" if w > h else "portrait")
    if coloured.mean() < 0.08:
        dark = float((mx < 0.35).mean())
        return {"colour": "black" if dark > 0.5 else ("white" if dark < 0.1 else "grey"),
                "style": "black & white", "format": fmt}
    c = rgb[coloured]
    r, g, b = c[:, 0], c[:, 1], c[:, 2]
    cmax, cmin = c.max(1), c.min(1)
    d = np.maximum(cmax - cmin, 1e-6)
    hue = np.where(cmax == r, ((g - b) / d) % 6, np.where(cmax == g, (b - r) / d + 2, (r - g) / d + 4)) * 60
    bins = np.array([0, 15, 45, 70, 165, 200, 260, 290, 340, 361])
    idx = np.digitize(hue, bins) - 1
    names = ["red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "red"]
    counts: dict[str, int] = {}
    for i in idx:
        counts[names[int(i)]] = counts.get(names[int(i)], 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    share = [v / len(idx) for _, v in ranked]
    style = "full colour" if sum(s >= 0.12 for s in share) >= 3 else (
        "two-tone" if len(share) > 1 and share[1] >= 0.12 else "single colour")
    return {"colour": ranked[0][0], "style": style, "format": fmt}


def _badge(img: Image.Image, rng: np.random.Generator) -> None:
    d = ImageDraw.Draw(img)
    w, h = img.size
    r = int(min(w, h) * rng.uniform(0.09, 0.15))
    x, y = (int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))) if rng.random() < 0.3 else (
        int(w - r * 1.2), int(r * 1.2))
    col = tuple(int(v) for v in rng.choice([[220, 30, 30], [250, 200, 20], [30, 120, 220], [20, 160, 60]]))
    d.ellipse([x - r, y - r, x + r, y + r], fill=col)
    d.text((x - r * 0.6, y - r * 0.3), str(rng.choice(["SALE", "NEW", "-30%", "HOT", "TOP"])), fill=(255, 255, 255))


def _new_shot(pic: Image.Image, props: list[Image.Image], rng: np.random.Generator) -> bytes:
    """The picture as a seller's product photo: background, props, placement (sometimes cut by
    the frame), light, a badge, a low-resolution upload, JPEG."""
    W = int(rng.choice([192, 224, 256, 288, 320]))
    H = int(W * rng.choice([1.0, 1.0, 0.75, 1.25]))
    S = max(W, H)
    kind = rng.random()
    if kind < 0.4:
        bg = np.full((S, S, 3), 255.0 - rng.uniform(0, 12), np.float32)
    else:
        bg = background(rng, S, S, [])
        if kind < 0.65:  # pale: a studio backdrop
            bg = 0.45 * bg + 0.55 * 255
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    if props and rng.random() < IMAGE_NUISANCE["props"]:  # other stock in the shot
        for o in props[: int(rng.integers(1, 3))]:
            paste(canvas, place(_square(o), S, S * rng.uniform(0.25, 0.45), float(rng.uniform(-20, 20)),
                                  rng.uniform(0.1, 0.9) * S, rng.uniform(0.1, 0.9) * S), False)
    size = S * rng.uniform(*IMAGE_NUISANCE["scale"])
    margin = max(0.0, (S - size) / 2) * 0.6
    if rng.random() < IMAGE_NUISANCE["cut"]:  # partly out of the frame
        margin = max(margin, 0.32 * size)
    cx, cy = S / 2 + rng.uniform(-margin, margin), S / 2 + rng.uniform(-margin, margin)
    angle = float(rng.uniform(-18, 18)) if rng.random() < 0.35 else 0.0
    sprite = _square(pic.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.15 else pic)
    paste(canvas, place(sprite, S, size, angle, cx, cy), shadow=rng.random() < 0.4)
    left, top = (S - W) // 2, (S - H) // 2
    canvas = canvas.crop((left, top, left + W, top + H))
    if rng.random() < 0.15:
        _badge(canvas, rng)
    if rng.random() < IMAGE_NUISANCE["low_res"]:  # a thumbnail upload, scaled back up
        k = rng.uniform(0.2, 0.45)
        canvas = canvas.resize((max(8, int(W * k)), max(8, int(H * k))), Image.BILINEAR).resize((W, H), Image.BILINEAR)
    out = Image.fromarray(light(np.asarray(canvas, np.float32), rng))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(40, 95)))
    return buf.getvalue()


def _reupload(jpeg: bytes, rng: np.random.Generator) -> bytes:
    """The same photo uploaded again: another size, sometimes a badge, another JPEG quality."""
    with Image.open(io.BytesIO(jpeg)) as im:
        img = im.convert("RGB")
    k = rng.uniform(0.7, 1.3)
    img = img.resize((max(32, int(img.width * k)), max(32, int(img.height * k))), Image.BILINEAR)
    if rng.random() < 0.3:
        _badge(img, rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(40, 95)))
    return buf.getvalue()


def _photo(spec: dict[str, Any], pic: Image.Image, root: str, seed: int, rng: np.random.Generator) -> bytes:
    """The product photo of a listing: a new shot, or the first listing's shot uploaded again."""
    if spec["photo_of"] is None:
        return _new_shot(pic, [_picture(root, d) for d in spec["distractors"][-2:]], rng)
    r_first = seeded_rng(seed, 1, spec["photo_of"]["index"]).spawn(6)[2]  # the first listing's r_img
    shot = _new_shot(pic, [_picture(root, d) for d in spec["photo_of"]["props"]], r_first)
    return _reupload(shot, rng)


def _scene_frames(pic: Image.Image, others: list[Image.Image], rng: np.random.Generator,
                  n: int) -> tuple[list[Image.Image], str]:
    """A low-resolution shop clip: the product among other stock on a shelf while the camera
    pans, or one slide of a slideshow of the shop's products."""
    v = VIDEO_NUISANCE
    R = int(rng.choice(v["resolution"]))  # the camera's resolution, shown at VIDEO_SIZE
    frames: list[Image.Image] = []
    black = Image.new("RGB", (VIDEO_SIZE, VIDEO_SIZE))
    gain0, gain1 = rng.uniform(0.75, 1.15, size=2)
    style = "slideshow" if rng.random() < v["slideshow"] else "shelf"
    if style == "slideshow":
        k = int(rng.integers(*v["slides"]))
        slides = [pic] + others[: k - 1]
        order = rng.permutation(len(slides))
        imgs = []
        for j in order:
            bg = background(rng, R, R, [])
            im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
            size = R * rng.uniform(0.5, 0.85)
            paste(im, place(_square(slides[int(j)]), R, size, 0.0, R / 2, R / 2), False)
            imgs.append(im)
        for i in range(n):
            im = imgs[min(len(imgs) - 1, i * len(imgs) // n)]
            frames.append(im.resize((VIDEO_SIZE, VIDEO_SIZE), Image.BILINEAR))
    else:  # shelf + pan
        SW, SH = int(R * rng.uniform(*v["scene"])), int(R * rng.uniform(1.2, 1.8))
        scene = Image.fromarray(np.clip(background(rng, max(SW, SH), max(SW, SH), []), 0, 255)
                                .astype(np.uint8)).crop((0, 0, SW, SH))
        S = max(SW, SH)
        items = [(o, R * rng.uniform(0.3, 0.5)) for o in others[: int(rng.integers(*v["distractors"]))]]
        t_star = rng.uniform(0.1, 0.9)  # when the camera passes the product
        x0, x1 = (0.0, SW - R) if rng.random() < 0.5 else (SW - R, 0.0)
        y0, y1 = rng.uniform(0, SH - R, size=2)
        cam = lambda t: (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)  # noqa: E731
        px, py = cam(t_star)
        pcx, pcy = px + R / 2 + rng.uniform(-0.2, 0.2) * R, py + R / 2 + rng.uniform(-0.2, 0.2) * R
        layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
        for o, size in items:
            ox, oy = rng.uniform(0, SW), rng.uniform(0, SH)
            if abs(ox - pcx) < R * 0.45 and abs(oy - pcy) < R * 0.45:
                ox = (ox + SW / 2) % SW
            layer.alpha_composite(place(_square(o), S, size, float(rng.uniform(-10, 10)), ox, oy))
        layer.alpha_composite(place(_square(pic), S, R * rng.uniform(*v["size"]), float(rng.uniform(-10, 10)),
                                     pcx, pcy))
        scene = scene.convert("RGBA")
        scene.alpha_composite(layer.crop((0, 0, SW, SH)))
        scene = scene.convert("RGB")
        for i in range(n):
            x, y = cam(i / max(n - 1, 1))
            crop = scene.crop((int(x), int(y), int(x) + R, int(y) + R))
            frames.append(crop.resize((VIDEO_SIZE, VIDEO_SIZE), Image.BILINEAR))
    out = []
    for i, f in enumerate(frames):
        g = gain0 + (gain1 - gain0) * i / max(n - 1, 1)
        out.append(Image.blend(black, f, float(g)))
    return out, style


# --------------------------------------------------------------------------- text and table


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _sku(rng: np.random.Generator) -> str:
    letters = "ABCDEFGHJKLMNPRSTVXZ"
    return "".join(rng.choice(list(letters), size=2)) + "-" + str(int(rng.integers(100, 99999)))


def make_title(name: str, facts: dict[str, str], rng: np.random.Generator) -> str:
    """A seller's title around a cleaned file name."""
    t = TITLE_NOISE
    words = name.split()
    if len(words) >= 3 and rng.random() < t["drop_word"]:
        del words[int(rng.integers(len(words)))]
    if rng.random() < t["typo"]:
        j = int(rng.integers(len(words)))
        words[j] = _typo(words[j], rng)
    core = [" ".join(words)]
    if rng.random() < t["product_type"]:
        typ = str(rng.choice(PRODUCT_TYPES))
        core = core + [typ] if rng.random() < 0.7 else [typ] + core
    if rng.random() < t["colour"]:
        core.insert(0, facts["colour"])
    if rng.random() < t["sku"]:
        core.append(_sku(rng))
    pre = [str(w) for w in rng.choice(BOILER_PRE, size=int(rng.choice(3, p=t["prefixes"])), replace=False)]
    suf = [str(w) for w in rng.choice(BOILER_SUF, size=int(rng.choice(3, p=t["suffixes"])), replace=False)]
    sep = str(rng.choice([" ", " ", " ", " - ", " | ", ", "]))
    title = sep.join(pre + [" ".join(core)] + suf)
    return seller_case(title, rng)


def make_table(spec: dict[str, Any], facts: dict[str, str], depts: list[str],
               rng: np.random.Generator) -> list[tuple[str, str]]:
    """Keys of uneven use: department (some listings, sometimes wrong), picture facts, rare
    tags from the name, and many keys with nothing to say about the category."""
    pairs: list[tuple[str, str]] = []
    if rng.random() < P_DEPARTMENT:
        dept = department(spec["label"])
        if rng.random() < P_WRONG_DEPARTMENT and len(depts) > 1:
            dept = str(rng.choice([d for d in depts if d != dept]))
        pairs.append((str(rng.choice(["department", "category", "shop section"])), dept))
    p_fact = 0.55 if spec["listing"] == 1 else 0.45
    for k, v in facts.items():
        if rng.random() < p_fact:
            pairs.append(({"colour": str(rng.choice(["color", "colour", "main colour"]))}.get(k, k), v))
    if rng.random() < P_TAGS:
        words = [w for w in spec["name"].split() if len(w) > 2] or spec["name"].split()
        pairs.append(("tags", ", ".join(str(w) for w in rng.choice(words, size=min(2, len(words)), replace=False))))
    shop = spec["shop"]
    for k, v in shop["template"]:
        if rng.random() < 0.8:
            pairs.append((k, v))
    noise = [k for k in list(NOISE_KEYS) + list(TABLE_NOISE) if k not in dict(shop["template"])]
    for k in rng.choice(noise, size=int(rng.integers(2, 6)), replace=False):
        k = str(k)
        if k == "sku":
            v = _sku(rng)
        elif k == "ean":
            v = "".join(str(int(d)) for d in rng.integers(0, 10, size=13))
        else:
            v = str(rng.choice(NOISE_KEYS.get(k) or TABLE_NOISE[k]))
        pairs.append((k, v))
    pairs = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    fix = {"plain": lambda s: s, "title": str.title, "upper": str.upper}[shop["key_case"]]
    return [(fix(k), v) for k, v in pairs]


# --------------------------------------------------------------------------- sound


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``espeak-ng`` saying ``text``: float32 mono at ``AUDIO_SR``."""
    from scipy.signal import resample_poly

    cmd = [ESPEAK, "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "--stdout"]
    res = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({res.returncode}): {res.stderr.decode(errors='replace')[:200]}")
    raw = res.stdout
    # espeak-ng streams its WAV: the sizes in the header are placeholders, the samples run to the end
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng wrote no WAV")
    pos, rate, data = 12, 22050, b""
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], int.from_bytes(raw[pos + 4:pos + 8], "little")
        if cid == b"fmt ":
            rate = int.from_bytes(raw[pos + 12:pos + 16], "little")
        if cid == b"data":
            data = raw[pos + 8:]
            break
        pos += 8 + size
    x = np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32) / 32768.0
    if rate != AUDIO_SR and len(x):
        g = np.gcd(rate, AUDIO_SR)
        x = resample_poly(x, AUDIO_SR // g, rate // g).astype(np.float32)
    return x


def _voice(rng: np.random.Generator) -> tuple[str, int, int]:
    v = str(rng.choice(VOICES)) + str(rng.choice(VOICE_VARIANTS))
    return v, int(rng.integers(110, 230)), int(rng.integers(15, 85))


def _music(shop: dict[str, Any], rng: np.random.Generator, n: int) -> np.ndarray:
    """A music bed: the shop's jingle (or, at times, any chord) held, with slow swells."""
    t = np.arange(n) / AUDIO_SR
    if rng.random() < SHOP_JINGLE:
        root, chord = 110.0 * 2 ** (shop["jingle_root"] / 12), shop["jingle_chord"]
    else:
        other = _shop(rng, "")
        root, chord = 110.0 * 2 ** (other["jingle_root"] / 12), other["jingle_chord"]
    x = np.zeros(n)
    for ratio in chord:
        x += np.sin(2 * np.pi * root * ratio * t + rng.uniform(0, 2 * np.pi))
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t + rng.uniform(0, 6.3))
    return x / max(np.abs(x).max(), 1e-9)


def _mix(speech: np.ndarray | None, shop: dict[str, Any], rng: np.random.Generator, seconds: float,
         music_db: tuple[float, float], snr_db: tuple[float, float]) -> np.ndarray:
    """Speech (if any) at a random offset over noise, hum and a music bed, ``seconds`` long."""
    n = int(round(seconds * AUDIO_SR))
    sig = np.zeros(n)
    if speech is not None and len(speech):
        off = int(rng.uniform(0, 0.6) * AUDIO_SR)
        m = max(0, min(len(speech), n - off))
        sig[off:off + m] = speech[:m] / max(np.abs(speech).max(), 1e-9)
    p = float(np.mean(sig ** 2)) if speech is not None else 0.02
    p = max(p, 1e-4)
    music = _music(shop, rng, n)
    music *= np.sqrt(p / 10 ** (rng.uniform(*music_db) / 10) / (float(np.mean(music ** 2)) + 1e-12))
    noise = rng.normal(0, 1, n)
    if rng.random() < 0.5:
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
    noise *= np.sqrt(p / 10 ** (rng.uniform(*snr_db) / 10) / (float(np.mean(noise ** 2)) + 1e-12))
    if rng.random() < 0.3:
        noise += 0.02 * np.sin(2 * np.pi * float(rng.choice([50.0, 60.0])) * np.arange(n) / AUDIO_SR)
    x = sig + music + noise
    x *= rng.uniform(0.2, 0.9) / max(np.abs(x).max(), 1e-9)
    return x.astype(np.float32)


def _spoken(name: str, rng: np.random.Generator) -> str:
    if rng.random() < 0.3:
        extra = str(rng.choice(SPOKEN_EXTRAS))
        return f"{extra}, {name}" if rng.random() < 0.5 else f"{name}, {extra}"
    return name


# --------------------------------------------------------------------------- one product


def _make_clipart_product(job: tuple[int, dict[str, Any], str, str, list[str]]
                          ) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Write one product's media; return (index, JSONL record, provenance)."""
    seed, spec, out, root, depts = job
    out_p = Path(out)
    rng = seeded_rng(seed, 1, spec["index"])
    r_title, r_table, r_img, r_vid, r_aud, r_vaud = rng.spawn(6)  # _photo relies on this order
    pid, missing = spec["id"], set(spec["missing"])
    pic = _picture(root, spec["source"])
    facts = picture_facts(pic)
    rec: dict[str, Any] = {"id": pid, "label": spec["label"], "instance": spec["instance"]}
    prov: dict[str, Any] = {"id": pid, "source": spec["source"], "listing": spec["listing"], "shop": spec["shop"]["id"],
                            "photo_reused": spec["photo_of"] is not None,
                            "wrong_title_source": spec["wrong_source"], "voice": None, "audio_in": None,
                            "video_style": None}
    if "text" not in missing:
        rec["title"] = make_title(spec["wrong_name"] or spec["name"], facts, r_title)
    if "table" not in missing:
        rec["table"] = {k: v for k, v in make_table(spec, facts, depts, r_table)}
    if "image" not in missing:
        rel = f"images/{pid}.jpg"
        (out_p / rel).write_bytes(_photo(spec, pic, root, seed, r_img))
        rec["image"] = rel
    speech = None
    if "audio" not in missing:
        voice, speed, pitch = spec["shop"]["voice"] if r_aud.random() < SHOP_VOICE else _voice(r_aud)
        speed, pitch = speed + int(r_aud.integers(-8, 9)), min(99, max(0, pitch + int(r_aud.integers(-6, 7))))
        speech = speak(_spoken(spec["name"], r_aud), voice, speed, pitch)
        prov["voice"] = [voice, speed, pitch]
    if "video" not in missing:
        rel = f"videos/{pid}.mp4"
        seconds = float(r_vid.uniform(3.0, 7.0))
        n = int(round(seconds * FPS))
        others = [_picture(root, d) for d in spec["distractors"]]
        frames, prov["video_style"] = _scene_frames(pic, others, r_vid, n)
        track_speech = None if spec["standalone_audio"] else speech
        sound = _mix(track_speech, spec["shop"], r_vaud, n / FPS, music_db=(-6, 6), snr_db=(5, 20))
        write_video(out_p / rel, frames, sound)
        rec["video"] = rel
        if not spec["standalone_audio"] and speech is not None:
            prov["audio_in"] = "video"
    if spec["standalone_audio"] and speech is not None:
        rel = f"audio/{pid}.wav"
        secs = min(12.0, len(speech) / AUDIO_SR + float(r_aud.uniform(0.8, 2.0)))
        (out_p / rel).write_bytes(wav_bytes(_mix(speech, spec["shop"], r_aud, secs, music_db=(6, 20), snr_db=(6, 25))))
        rec["audio"] = rel
        prov["audio_in"] = "wav"
    order = ("id", "label", "instance", "title", "table", "image", "video", "audio")
    return spec["index"], {k: rec[k] for k in order if k in rec}, prov


# --------------------------------------------------------------------------- the corpus


def _clipart_stats(seed: int, categories: list[str], root: str, specs: list[dict[str, Any]],
           records: list[dict[str, Any]]) -> dict[str, Any]:
    field = {"image": "image", "text": "title", "table": "table", "video": "video", "audio": None}
    mods: dict[str, dict[str, int]] = {}
    for m in MODALITIES:
        ok = sum(1 for r in records if (("audio" in r or "video" in r) if m == "audio" else field[m] in r))
        mods[m] = {"expected_ok": ok, "expected_failures": 0, "absent": len(records) - ok}
    sizes = {c: 0 for c in categories}
    instances: dict[str, set[str]] = {c: set() for c in categories}
    inst_count: dict[str, int] = {}
    for r in records:
        sizes[r["label"]] += 1
        instances[r["label"]].add(r["instance"])
        inst_count[r["instance"]] = inst_count.get(r["instance"], 0) + 1
    n = len(records)
    missing_any = sum(1 for s in specs if s["missing"])
    return {
        "generator": CLIPART.generator, "version": CLIPART.version, "seed": seed, "n_items": n,
        "n_categories": sum(1 for v in sizes.values() if v), "n_instances": len(inst_count),
        "categories": categories, "clipart_root": root,
        "category_sizes": dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "category_instances": {c: len(instances[c]) for c in sizes},
        "departments": {c: department(c) for c in categories},
        "instance_listings": {str(k): sum(1 for v in inst_count.values() if v == k) for k in (1, 2)},
        "modalities": mods,
        "missing_rate": {m: round(mods[m]["absent"] / n, 4) for m in MODALITIES},
        "totals": {
            "products": n,
            "expected_ok": sum(v["expected_ok"] for v in mods.values()),
            "expected_failures": 0,
            "absent": sum(v["absent"] for v in mods.values()),
            "complete_products": n - missing_any,
            "products_missing_a_modality": missing_any,
            "wrong_titles": sum(1 for s in specs if s["wrong_source"]),
            "standalone_audio_files": sum(1 for r in records if "audio" in r),
        },
        "expected_failure_ids": {m: [] for m in MODALITIES},
        "wrong_title_ids": [s["id"] for s in specs if s["wrong_source"]],
        "media": {"video_size": VIDEO_SIZE, "fps": FPS, "audio_sample_rate": AUDIO_SR,
                  "video_codec": "h264/aac", "speech": ESPEAK},
    }


def make_corpus(out_dir: str | Path, n_items: int = DEFAULT_ITEMS, seed: int = 0, *,
                categories: Sequence[str] = DEFAULT_CATEGORIES, root: str | Path = DEFAULT_ROOT,
                workers: int | None = None, progress: bool = False,
                on_item: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write a clipart corpus of ``n_items`` products under ``out_dir``; return its stats.

    ``workers`` processes (default: up to 2) make the products; the output does not depend on
    it. ``out_dir`` must be new, empty or hold an earlier clipart corpus (which is replaced).
    Raises ``MissingPackagesError`` when openclipart-png or espeak-ng is not installed.
    """
    n_items, seed = check_request(CLIPART, n_items, seed)
    check_packages(root)
    cats, root_s = list(categories), str(root)
    specs = plan_corpus(n_items, seed, cats, root_s)
    out = Path(out_dir)
    depts = sorted({department(c) for c in DEFAULT_CATEGORIES} | {department(c) for c in cats})
    jobs = [(seed, s, str(out), root_s, depts) for s in specs]
    results = make_products(CLIPART, out, _make_clipart_product, jobs, workers=workers, progress=progress,
                            on_item=on_item, chunksize=4)
    write_jsonl(out / SOURCES_FILE, [prov for _, _, prov in results])
    return finish(CLIPART, out, _clipart_stats(seed, cats, root_s, specs, [rec for _, rec, _ in results]))
