"""The built-in demo corpus: a synthetic product catalogue that looks like a real one.

``make_corpus(out_dir, n_items, seed)`` writes::

    out_dir/corpus.jsonl        one product per line (format: scalemm/corpus.py)
    out_dir/images/<id>.jpg     JPEG, 160x160
    out_dir/videos/<id>.mp4     H.264 (libx264, yuv420p, 128x128, 24 fps, 2-4 s) + AAC mono 16 kHz
    out_dir/audio/<id>.wav      16-bit PCM mono 16 kHz (about 30% of products)
    out_dir/corpus_stats.json   per modality: expected_ok / expected_failures / absent, and more

(the folder by :mod:`corpora.writer`, the media files, broken ones included, by
:mod:`corpora.media`; the seller's words and the photo's backdrop, placement and light are
:mod:`corpora.listing`'s, shared with the clipart corpus).

How the catalogue is built (each modality carries something the others lack, and each has
its own nuisance, independent across modalities):

- 24 categories with a Zipf-like size distribution (which ones are the head depends on the
  seed). Each physical product (``instance``) is listed 1 to 3 times by different sellers,
  with a different photo, video, title, table and recording each time.
- category signal: a bold glyph drawn as the object in the image and video frames (six pairs
  of categories share a glyph, see ``SHARED_SHAPES``); a category noun, with synonyms and
  sometimes left out, in the title; category-specific attribute keys in the table; a
  category sound (base pitch + timbre) in the audio (six other pairs share a sound, see
  ``SHARED_SOUNDS``; no two categories share both glyph and sound).
- instance signal: brand and model code (title, table), colour and pattern of the object
  (visible; the colour is named in the title or table only sometimes), attribute values
  (table only), a pitch offset and a rhythm (audible only).
- nuisance: background, pose, lighting, JPEG quality (image); background, camera pan and
  motion path (video); seller boilerplate, casing and word order (title); irrelevant keys,
  key casing and order (table); gain, noise and start offset (audio).
- defects, planned exactly: 20% of products miss at least one modality, 10% have a noisy or
  mismatched title, about 3.5% (at least 3) have corrupt media: a truncated mp4 (its moov
  atom is lost, so it cannot be opened), garbage bytes under .jpg, or an empty .wav (a
  zero-byte file or a header with zero samples).

The audio modality of a product is its standalone ``audio`` file if it has one, otherwise
the video's sound track: a corrupt video without a standalone audio file is an expected
failure of both video and audio.

Deterministic by seed: every product is generated from its own generator seeded with
``(seed, index)``, so products can be made in parallel and the output does not depend on
the number of workers; the same seed gives byte-identical files (JPEGs, WAVs, and mp4s, which
are muxed with ``+bitexact``), given the same Pillow/libjpeg and PyAV/x264 builds.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from scalemm.errors import UserError
from scalemm.modalities import MODALITIES

from .listing import BOILER_PRE, BOILER_SUF, NOISE_KEYS, background, light, paste, place, seller_case
from .media import AUDIO_SR, FPS, VIDEO_SIZE, garbage_jpg, truncate_file, wav_bytes, write_video
from .writer import CorpusKind, check_request, finish, make_products, seeded_rng

IMAGE_SIZE = 160
VIDEO_SECONDS = (2.0, 4.0)
WAV_SECONDS = (2.0, 5.0)

# Planned defect rates (exact counts, rounded).
MISSING_RATE = 0.20
MISMATCHED_TITLE_RATE = 0.06
NOISY_TITLE_RATE = 0.04
CORRUPT_RATE = 0.035
MIN_CORRUPT = 3
STANDALONE_AUDIO_RATE = 0.30
TABLE_STRING_RATE = 0.20
ZIPF_EXPONENT = 1.0
LISTINGS_P = (0.5, 0.3, 0.2)  # an instance is listed 1, 2 or 3 times


class DemoCorpusError(UserError, ValueError):
    """A user error: bad arguments or an output directory that cannot be used."""


DEMO = CorpusKind("demo", generator="scale-demo-corpus", version=1, error=DemoCorpusError)


# --------------------------------------------------------------------------- the catalogue

# name, nouns (first is canonical), glyph, sound id, descriptors, category attributes
CATEGORIES: list[dict[str, Any]] = [
    dict(name="kettle", nouns=["electric kettle", "kettle", "water boiler", "tea kettle"], shape="dome", sound=9,
         words=["cordless", "fast boil", "360 swivel base"],
         attrs={"capacity": ["1.0L", "1.2L", "1.5L", "1.7L", "2.0L"], "power": ["1200W", "1500W", "1800W", "2200W"],
                "material": ["stainless steel", "borosilicate glass", "BPA-free plastic"], "auto shut-off": ["yes", "no"]}),
    dict(name="cooking pot", nouns=["cooking pot", "stock pot", "saucepan", "casserole"], shape="dome", sound=3,
         words=["non-stick", "with lid", "induction ready"],
         attrs={"capacity": ["2L", "3L", "4.5L", "6L"], "diameter": ["18cm", "20cm", "24cm", "28cm"],
                "material": ["stainless steel", "cast iron", "aluminium"], "induction compatible": ["yes", "no"]}),
    dict(name="blender", nouns=["blender", "smoothie maker", "food processor", "mixer"], shape="hourglass", sound=3,
         words=["high speed", "countertop", "ice crushing"],
         attrs={"power": ["300W", "600W", "1000W", "1500W"], "jar capacity": ["0.6L", "1.2L", "1.5L", "2L"],
                "speeds": ["3", "5", "8", "10"], "blade": ["4-blade stainless", "6-blade titanium"]}),
    dict(name="hair dryer", nouns=["hair dryer", "blow dryer", "hairdryer", "hair blower"], shape="arrow", sound=12,
         words=["ionic", "salon", "foldable"],
         attrs={"power": ["1200W", "1800W", "2200W"], "heat settings": ["2", "3", "4"], "ionic": ["yes", "no"],
                "cord length": ["1.8m", "2.5m", "3m"]}),
    dict(name="desk fan", nouns=["desk fan", "table fan", "electric fan", "mini fan"], shape="star", sound=12,
         words=["quiet", "oscillating", "usb powered"],
         attrs={"blade diameter": ["6in", "9in", "12in", "16in"], "speeds": ["3", "4", "6"],
                "oscillation": ["yes", "no"], "noise level": ["25dB", "38dB", "45dB"]}),
    dict(name="electric toothbrush", nouns=["electric toothbrush", "sonic toothbrush", "toothbrush", "power toothbrush"],
         shape="bolt", sound=16, words=["sonic", "rechargeable", "whitening"],
         attrs={"brushing modes": ["2", "3", "5"], "battery life": ["10 days", "30 days", "45 days"],
                "bristles": ["soft", "medium", "extra soft"], "charging": ["USB-C", "inductive base"]}),
    dict(name="headphones", nouns=["headphones", "headset", "over-ear headphones", "earphones"], shape="ring", sound=6,
         words=["wireless", "hi-fi", "foldable"],
         attrs={"connectivity": ["bluetooth 5.3", "wired 3.5mm", "USB-C"], "battery life": ["20h", "30h", "40h", "60h"],
                "noise cancelling": ["ANC", "passive", "none"], "driver size": ["32mm", "40mm", "50mm"]}),
    dict(name="bluetooth speaker", nouns=["bluetooth speaker", "portable speaker", "wireless speaker", "speaker"],
         shape="disk", sound=14, words=["deep bass", "outdoor", "stereo"],
         attrs={"output power": ["5W", "10W", "20W", "40W"], "playtime": ["8h", "12h", "24h"],
                "waterproof": ["IPX4", "IPX5", "IP67"], "connectivity": ["bluetooth 5.0", "bluetooth 5.3"]}),
    dict(name="smartphone", nouns=["smartphone", "mobile phone", "cell phone", "android phone"], shape="square",
         sound=6, words=["unlocked", "dual sim", "5G"],
         attrs={"screen size": ["6.1in", "6.5in", "6.7in"], "storage": ["64GB", "128GB", "256GB", "512GB"],
                "ram": ["4GB", "6GB", "8GB", "12GB"], "camera": ["48MP", "50MP", "108MP"]}),
    dict(name="tablet", nouns=["tablet", "tablet pc", "android tablet", "pad"], shape="square", sound=14,
         words=["hd display", "wifi", "kids"],
         attrs={"screen size": ["8in", "10.1in", "11in", "12.9in"], "storage": ["32GB", "64GB", "128GB", "256GB"],
                "ram": ["3GB", "4GB", "8GB"], "stylus support": ["yes", "no"]}),
    dict(name="power bank", nouns=["power bank", "portable charger", "battery pack", "external battery"],
         shape="diamond", sound=1, words=["fast charging", "slim", "led display"],
         attrs={"battery capacity": ["5000mAh", "10000mAh", "20000mAh", "26800mAh"], "output": ["18W PD", "22.5W", "65W PD"],
                "ports": ["2", "3", "4"], "input": ["USB-C", "micro-USB"]}),
    dict(name="wristwatch", nouns=["wristwatch", "watch", "analog watch", "wrist watch"], shape="ring", sound=17,
         words=["luxury", "classic", "waterproof"],
         attrs={"case diameter": ["36mm", "40mm", "42mm", "44mm"], "movement": ["quartz", "automatic", "solar"],
                "water resistance": ["3ATM", "5ATM", "10ATM"], "strap": ["leather", "steel", "silicone", "nylon"]}),
    dict(name="sunglasses", nouns=["sunglasses", "sun glasses", "shades", "eyewear"], shape="heart", sound=4,
         words=["retro", "oversized", "driving"],
         attrs={"lens": ["polarized", "UV400", "photochromic"], "frame material": ["acetate", "metal", "TR90"],
                "lens width": ["52mm", "55mm", "58mm"], "frame shape": ["aviator", "wayfarer", "round", "cat-eye"]}),
    dict(name="sneakers", nouns=["sneakers", "running shoes", "trainers", "sports shoes"], shape="chevron", sound=10,
         words=["breathable", "lightweight", "casual"],
         attrs={"shoe size": ["EU 38", "EU 40", "EU 42", "EU 44", "EU 46"], "upper": ["mesh", "leather", "knit", "canvas"],
                "sole": ["rubber", "EVA", "foam"], "closure": ["lace-up", "slip-on", "velcro"]}),
    dict(name="backpack", nouns=["backpack", "rucksack", "daypack", "school bag"], shape="ushape", sound=7,
         words=["travel", "anti-theft", "laptop"],
         attrs={"volume": ["15L", "20L", "25L", "30L", "40L"], "laptop compartment": ["13in", "15.6in", "17in", "none"],
                "material": ["nylon", "polyester", "canvas"], "waterproof": ["yes", "no"]}),
    dict(name="handbag", nouns=["handbag", "shoulder bag", "tote bag", "purse"], shape="ushape", sound=0,
         words=["elegant", "vintage", "large capacity"],
         attrs={"strap": ["shoulder", "crossbody", "top handle"], "material": ["PU leather", "genuine leather", "canvas"],
                "closure": ["zipper", "magnetic snap", "drawstring"], "size": ["small", "medium", "large"]}),
    dict(name="wallet", nouns=["wallet", "card holder", "billfold", "purse wallet"], shape="triangle", sound=0,
         words=["slim", "minimalist", "men's"],
         attrs={"material": ["genuine leather", "PU leather", "carbon fibre"], "card slots": ["4", "6", "8", "12"],
                "rfid blocking": ["yes", "no"], "style": ["bifold", "trifold", "card holder"]}),
    dict(name="water bottle", nouns=["water bottle", "sports bottle", "drinking bottle", "bottle"], shape="bars",
         sound=13, words=["leak-proof", "gym", "with time marker"],
         attrs={"capacity": ["500ml", "750ml", "1L"], "material": ["tritan", "stainless steel", "glass"],
                "lid": ["flip straw", "screw cap", "sports cap"], "bpa free": ["yes"]}),
    dict(name="thermos", nouns=["thermos", "vacuum flask", "insulated bottle", "travel flask"], shape="bars",
         sound=5, words=["keeps hot 24h", "double wall", "travel"],
         attrs={"capacity": ["350ml", "500ml", "750ml", "1L"], "insulation": ["double wall vacuum"],
                "heat retention": ["6h", "12h", "24h"], "material": ["304 stainless steel", "316 stainless steel"]}),
    dict(name="coffee mug", nouns=["coffee mug", "mug", "tea cup", "cup"], shape="ell", sound=5,
         words=["ceramic", "funny", "large"],
         attrs={"capacity": ["300ml", "350ml", "450ml"], "material": ["ceramic", "porcelain", "enamel", "glass"],
                "dishwasher safe": ["yes", "no"], "microwave safe": ["yes", "no"]}),
    dict(name="desk lamp", nouns=["desk lamp", "table lamp", "reading lamp", "led lamp"], shape="star", sound=2,
         words=["eye-caring", "dimmable", "touch control"],
         attrs={"brightness": ["300lm", "500lm", "800lm"], "color temperature": ["3000K", "4000K", "5000K", "3000-6500K"],
                "dimmable": ["yes", "no"], "power source": ["USB", "mains", "battery"]}),
    dict(name="umbrella", nouns=["umbrella", "travel umbrella", "folding umbrella", "parasol"], shape="crescent",
         sound=11, words=["windproof", "compact", "uv protection"],
         attrs={"canopy diameter": ["95cm", "105cm", "120cm"], "ribs": ["8", "10", "16", "24"],
                "opening": ["auto open", "manual", "auto open/close"], "wind resistant": ["yes", "no"]}),
    dict(name="office chair", nouns=["office chair", "desk chair", "ergonomic chair", "computer chair"], shape="tee",
         sound=15, words=["ergonomic", "swivel", "high back"],
         attrs={"max load": ["120kg", "136kg", "150kg"], "armrest": ["fixed", "2D", "3D", "4D"],
                "backrest": ["mesh", "fabric", "PU leather"], "lumbar support": ["yes", "adjustable", "no"]}),
    dict(name="yoga mat", nouns=["yoga mat", "exercise mat", "fitness mat", "pilates mat"], shape="cross", sound=8,
         words=["non-slip", "eco friendly", "thick"],
         attrs={"thickness": ["4mm", "6mm", "8mm", "10mm"], "material": ["TPE", "NBR", "natural rubber", "cork"],
                "length": ["173cm", "183cm", "200cm"], "non-slip": ["yes"]}),
]
N_SOUNDS = 18


def _pairs(key: str) -> list[list[str]]:
    by: dict[Any, list[str]] = {}
    for c in CATEGORIES:
        by.setdefault(c[key], []).append(c["name"])
    return [v for v in by.values() if len(v) > 1]


SHARED_SHAPES = _pairs("shape")  # categories that images and videos alone cannot separate
SHARED_SOUNDS = _pairs("sound")  # categories that audio alone cannot separate

BRANDS = ["Zentra", "Kovix", "Lumora", "Pexon", "Hallmarq", "Nordvik", "Solenne", "Tarvo", "Mirabel", "Quorra",
          "Brisko", "Velda", "Orinox", "Ambrio", "Castell", "Fennick", "Grovia", "Helmsa", "Ilvaro", "Jorvik",
          "Kestra", "Lindqvist", "Moravia", "Nuvelo", "Ostara", "Pallas", "Quintex", "Rosmund", "Sabre", "Tivoli"]

COLOURS: list[tuple[str, tuple[int, int, int], list[str]]] = [
    ("red", (205, 32, 38), ["red", "scarlet"]),
    ("orange", (242, 122, 22), ["orange"]),
    ("yellow", (242, 206, 34), ["yellow", "mustard"]),
    ("green", (38, 150, 62), ["green"]),
    ("teal", (18, 140, 142), ["teal", "turquoise"]),
    ("blue", (32, 72, 205), ["blue", "royal blue"]),
    ("navy", (22, 32, 92), ["navy", "navy blue", "dark blue"]),
    ("purple", (122, 50, 162), ["purple", "violet"]),
    ("pink", (242, 120, 172), ["pink", "rose"]),
    ("brown", (122, 76, 40), ["brown", "coffee"]),
    ("black", (26, 26, 28), ["black", "jet black"]),
    ("white", (242, 242, 236), ["white", "ivory"]),
    ("grey", (132, 132, 134), ["grey", "gray", "space grey"]),
    ("beige", (216, 196, 160), ["beige", "khaki"]),
]
PATTERNS = ["solid", "solid", "stripes", "dots", "checker", "split"]

GENERIC_WORDS = ["premium", "portable", "durable", "professional", "mini", "2 in 1", "upgraded", "classic"]
# instance rhythms (pulse rate in Hz, duty); rate 0 is a continuous sound
RHYTHMS = [(0.0, 1.0), (1.5, 0.6), (2.5, 0.5), (4.0, 0.5), (6.0, 0.4), (3.0, 0.75)]
# timbre templates: (partial ratio, amplitude); sound s uses template s % 6
TIMBRES: list[list[tuple[float, float]]] = [
    [(1, 1.0), (2, 0.12)],                                    # pure
    [(1, 1.0), (3, 0.55), (5, 0.33), (7, 0.22)],              # odd harmonics (hollow, square-like)
    [(n, 1.0 / n) for n in range(1, 9)],                      # saw-like (bright, buzzy)
    [(1, 1.0), (2.76, 0.6), (5.40, 0.38), (8.93, 0.22)],      # bell (inharmonic)
    [(1, 0.45), (2, 1.0), (4, 0.6), (6, 0.3)],                # octave-heavy
    [(1, 1.0), (1.5, 0.7), (3, 0.4), (4.5, 0.2)],             # dual tone (fifth)
]
SOUND_F0 = [150.0 * (10.0 ** (s / (N_SOUNDS - 1))) for s in range(N_SOUNDS)]  # 150 Hz .. 1500 Hz, log-spaced
VIBRATO = [(0.0, 0.0), (5.0, 0.012), (0.0, 0.0)]  # sound s uses VIBRATO[s % 3]

# glyphs in unit coordinates ([-1, 1], y down); ops are drawn in order, fill 0 cuts out
GLYPHS: dict[str, list[tuple]] = {
    "disk": [("ellipse", (-1, -1, 1, 1), 1)],
    "ring": [("ellipse", (-1, -1, 1, 1), 1), ("ellipse", (-0.48, -0.48, 0.48, 0.48), 0)],
    "triangle": [("poly", [(0, -1), (1, 0.85), (-1, 0.85)], 1)],
    "square": [("rrect", (-0.8, -0.95, 0.8, 0.95), 0.28, 1)],
    "star": [("poly", [(float(np.sin(a) * r), float(-np.cos(a) * r)) for a, r in
                       zip(np.arange(10) * np.pi / 5, [1.0, 0.42] * 5)], 1)],
    "cross": [("rect", (-0.3, -1, 0.3, 1), 1), ("rect", (-1, -0.3, 1, 0.3), 1)],
    "crescent": [("ellipse", (-1, -1, 1, 1), 1), ("ellipse", (-0.35, -0.95, 1.35, 0.75), 0)],
    "heart": [("ellipse", (-1, -0.85, 0.06, 0.2), 1), ("ellipse", (-0.06, -0.85, 1, 0.2), 1),
              ("poly", [(-0.97, -0.2), (0.97, -0.2), (0, 1)], 1)],
    "arrow": [("poly", [(-1, -0.3), (0.15, -0.3), (0.15, -0.8), (1, 0), (0.15, 0.8), (0.15, 0.3), (-1, 0.3)], 1)],
    "diamond": [("poly", [(0, -1), (0.72, 0), (0, 1), (-0.72, 0)], 1)],
    "tee": [("rect", (-1, -1, 1, -0.42), 1), ("rect", (-0.28, -0.42, 0.28, 1), 1)],
    "ell": [("rect", (-0.8, -1, -0.2, 1), 1), ("rect", (-0.8, 0.4, 0.9, 1), 1)],
    "hourglass": [("poly", [(-0.85, -1), (0.85, -1), (0.12, 0), (0.85, 1), (-0.85, 1), (-0.12, 0)], 1)],
    "bolt": [("poly", [(0.25, -1), (-0.65, 0.12), (-0.05, 0.12), (-0.3, 1), (0.7, -0.2), (0.1, -0.2), (0.45, -1)], 1)],
    "bars": [("rect", (-1, -0.9, -0.45, 0.9), 1), ("rect", (-0.27, -0.9, 0.27, 0.9), 1),
             ("rect", (0.45, -0.9, 1, 0.9), 1)],
    "ushape": [("ellipse", (-0.9, -0.35, 0.9, 0.95), 1), ("rect", (-0.9, -0.95, 0.9, 0.3), 1),
               ("rect", (-0.3, -0.95, 0.3, 0.3), 0), ("ellipse", (-0.3, 0.0, 0.3, 0.6), 0)],
    "dome": [("pieslice", (-1, -0.8, 1, 1.2), 180, 360, 1), ("rect", (-1, 0.2, 1, 0.6), 1),
             ("ellipse", (-0.16, -1, 0.16, -0.68), 1)],
    "chevron": [("poly", [(-1, -0.6), (0, 0.3), (1, -0.6), (1, 0.1), (0, 1), (-1, 0.1)], 1)],
}

_MASKS: dict[str, Image.Image] = {}
_CANON = 256


def _canon_mask(shape: str) -> Image.Image:
    m = _MASKS.get(shape)
    if m is None:
        big = 2 * _CANON
        im = Image.new("L", (big, big), 0)
        d = ImageDraw.Draw(im)

        def px(x: float) -> float:
            return (x * 0.92 + 1) / 2 * big

        for op in GLYPHS[shape]:
            kind, fill = op[0], 255 * op[-1]
            if kind == "poly":
                d.polygon([(px(x), px(y)) for x, y in op[1]], fill=fill)
            elif kind == "ellipse":
                d.ellipse([px(v) for v in op[1]], fill=fill)
            elif kind == "rect":
                d.rectangle([px(v) for v in op[1]], fill=fill)
            elif kind == "rrect":
                d.rounded_rectangle([px(v) for v in op[1]], radius=op[2] * big / 2, fill=fill)
            elif kind == "pieslice":
                d.pieslice([px(v) for v in op[1]], op[2], op[3], fill=fill)
        m = im.resize((_CANON, _CANON), Image.LANCZOS)
        _MASKS[shape] = m
    return m


# --------------------------------------------------------------------------- planning


def _category_sizes(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like product counts per category; the head categories depend on the seed."""
    k = len(CATEGORIES)
    ranks = rng.permutation(k) + 1  # rank of each category
    w = 1.0 / ranks.astype(np.float64) ** ZIPF_EXPONENT
    raw = n_items * w / w.sum()
    sizes = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - sizes), kind="stable")
    sizes[order[: n_items - int(sizes.sum())]] += 1
    if n_items >= k:  # every category present
        for c in np.flatnonzero(sizes == 0):
            sizes[int(np.argmax(sizes))] -= 1
            sizes[c] = 1
    return sizes


def plan_corpus(n_items: int, seed: int) -> list[dict[str, Any]]:
    """The catalogue plan, without media: one spec per product, in corpus order.

    Each spec holds ``index``, ``id``, ``category`` (index into ``CATEGORIES``), ``instance``
    (number), ``missing`` (modalities left out), ``corrupt`` (None, "image", "video" or
    "audio"), ``standalone_audio``, ``empty_wav``, ``title_mode`` ("ok", "mismatched",
    "noisy") and ``table_string``. Cheap: this is how category sizes, instance listings and
    defect counts are decided, before any media is made. The steps draw from one generator,
    in this order.
    """
    rng = seeded_rng(seed, 0)
    specs = _plan_catalogue(n_items, rng)
    intact = _plan_corrupt_media(specs, rng)
    _plan_standalone_audio(specs, rng)
    _plan_missing_among(specs, intact, rng)
    _plan_title_and_table_form(specs, rng)
    return specs


def _plan_catalogue(n_items: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One blank spec per product: categories of Zipf-like sizes, each instance listed 1 to 3
    times, the listings shuffled."""
    sizes = _category_sizes(n_items, rng)
    listings: list[tuple[int, int]] = []  # (category, local instance number)
    groups: list[tuple[int, int]] = []  # (category, n listings) per instance
    for c, size in enumerate(sizes):
        left = int(size)
        while left > 0:
            n = min(left, int(rng.choice(3, p=LISTINGS_P)) + 1)
            groups.append((c, n))
            left -= n
    inst_ids = rng.permutation(len(groups))  # instance numbers do not reveal the category
    for g, (c, n) in enumerate(groups):
        listings.extend([(c, int(inst_ids[g]))] * n)
    order = rng.permutation(n_items)
    specs: list[dict[str, Any]] = []
    for idx in range(n_items):
        c, inst = listings[int(order[idx])]
        specs.append(dict(index=idx, id=f"p{idx:06d}", category=c, instance=inst, missing=[], corrupt=None,
                          standalone_audio=False, empty_wav="", title_mode="ok", table_string=False))
    return specs


def _plan_corrupt_media(specs: list[dict[str, Any]], rng: np.random.Generator) -> np.ndarray:
    """Mark the products with a corrupt video, image or audio file (in turn); returns the other
    products' indices, shuffled (missing modalities are drawn from them: the two are disjoint)."""
    n_items = len(specs)
    n_corrupt = min(n_items, max(MIN_CORRUPT, int(round(CORRUPT_RATE * n_items))))
    perm = rng.permutation(n_items)
    corrupt_idx, rest = perm[:n_corrupt], perm[n_corrupt:]
    kinds = ("video", "image", "audio")
    for j, i in enumerate(sorted(int(x) for x in corrupt_idx)):
        kind = kinds[j % 3]
        specs[i]["corrupt"] = kind
        if kind == "audio":
            specs[i]["empty_wav"] = "zero-bytes" if (j // 3) % 2 == 0 else "header-only"
    return rest


def _plan_standalone_audio(specs: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Which products have a WAV of their own (a corrupt audio is one; the first corrupt video is
    also its product's audio source)."""
    for s in specs:
        s["standalone_audio"] = bool(rng.random() < STANDALONE_AUDIO_RATE)
        if s["corrupt"] == "audio":
            s["standalone_audio"] = True
    first_bad_video = next((s for s in specs if s["corrupt"] == "video"), None)
    if first_bad_video is not None:  # a corrupt video that is also the audio source
        first_bad_video["standalone_audio"] = False


def _plan_missing_among(specs: list[dict[str, Any]], intact: np.ndarray, rng: np.random.Generator) -> None:
    """One (80%) or two modalities left out of ``MISSING_RATE`` of the products, among ``intact``."""
    n_missing = min(len(intact), int(round(MISSING_RATE * len(specs))))
    droppable = ["image", "text", "table", "video"]
    p_drop = np.array([0.2, 0.12, 0.33, 0.35])
    for i in sorted(int(x) for x in intact[:n_missing]):
        k = 1 if rng.random() < 0.8 else 2
        specs[i]["missing"] = sorted(str(m) for m in rng.choice(droppable, size=k, replace=False, p=p_drop))


def _plan_title_and_table_form(specs: list[dict[str, Any]], rng: np.random.Generator) -> None:
    """Mismatched and noisy titles among the titled products; tables in string form."""
    n_items = len(specs)
    titled = [s for s in specs if "text" not in s["missing"]]
    tperm = rng.permutation(len(titled))
    n_mis = int(round(MISMATCHED_TITLE_RATE * n_items))
    n_noisy = int(round(NOISY_TITLE_RATE * n_items))
    for j, t in enumerate(tperm[: n_mis + n_noisy]):
        titled[int(t)]["title_mode"] = "mismatched" if j < n_mis else "noisy"
    for s in specs:
        if "table" not in s["missing"]:
            s["table_string"] = bool(rng.random() < TABLE_STRING_RATE)


def _instance(seed: int, category: int, inst: int) -> dict[str, Any]:
    cat = CATEGORIES[category]
    brands = _brands(seed, category)
    rng = seeded_rng(seed, 2, inst)
    ci = int(rng.integers(len(COLOURS)))
    c2 = int((ci + rng.integers(1, len(COLOURS))) % len(COLOURS))
    letters = "ABCDEFGHJKLMNPRSTVXZ"
    code = "".join(rng.choice(list(letters), size=int(rng.integers(1, 3)))) + "-" + str(int(rng.integers(10, 999)))
    if rng.random() < 0.35:
        code += str(rng.choice(list("SXLP")))
    return dict(
        brand=str(rng.choice(brands)), model=code, colour=ci, colour2=c2,
        pattern=str(rng.choice(PATTERNS)), pat_angle=float(rng.uniform(0, np.pi)), pat_period=float(rng.uniform(0.14, 0.26)),
        attrs={k: str(rng.choice(v)) for k, v in cat["attrs"].items()},
        words=[str(w) for w in rng.choice(cat["words"] + GENERIC_WORDS, size=2, replace=False)],
        pitch=float(rng.uniform(-0.45, 0.45)), rhythm=RHYTHMS[int(rng.integers(len(RHYTHMS)))],
    )


def _brands(seed: int, category: int) -> list[str]:
    r = seeded_rng(seed, 3, category)
    return [str(b) for b in r.choice(BRANDS, size=5, replace=False)]


# --------------------------------------------------------------------------- text and table


def _title(cat: dict[str, Any], inst: dict[str, Any], rng: np.random.Generator) -> str:
    groups: list[list[str]] = []
    ident = []
    if rng.random() < 0.9:
        ident.append(inst["brand"])
    if rng.random() < 0.85:
        ident.append(inst["model"])
    groups.append(ident)
    noun = [] if rng.random() < 0.1 else [str(rng.choice(cat["nouns"]))]
    words = list(inst["words"][: int(rng.integers(0, 3))])
    groups.append(words + noun)
    if rng.random() < 0.4:
        groups.append([str(rng.choice(COLOURS[inst["colour"]][2]))])
    attrs = list(inst["attrs"].values())
    n_attr = int(rng.integers(0, 3))
    if n_attr:
        groups.append([attrs[int(i)] for i in rng.choice(len(attrs), size=n_attr, replace=False)])
    if rng.random() < 0.5:
        groups = [groups[int(i)] for i in rng.permutation(len(groups))]
    core = [w for g in groups for w in g]
    pre = [str(w) for w in rng.choice(BOILER_PRE, size=int(rng.choice(3, p=[0.35, 0.45, 0.2])), replace=False)]
    suf = [str(w) for w in rng.choice(BOILER_SUF, size=int(rng.choice(3, p=[0.3, 0.45, 0.25])), replace=False)]
    sep = str(rng.choice([" ", " ", " ", " - ", " | ", ", "]))
    parts = pre + [" ".join(core)] + suf
    title = sep.join(p for p in parts if p)
    return seller_case(title, rng) if title.strip() else inst["model"]


def _noisy_title(title: str, inst: dict[str, Any], rng: np.random.Generator) -> str:
    kind = int(rng.integers(3))
    if kind == 0:  # seller spam only
        words = [str(w) for w in rng.choice(BOILER_PRE + BOILER_SUF, size=4, replace=False)]
        return " ".join(words[:2] + [inst["model"]] + words[2:]).upper()
    if kind == 1:  # mangled characters
        chars = list(title)
        for i in rng.choice(len(chars), size=max(1, len(chars) // 3), replace=False):
            chars[int(i)] = str(rng.choice(list("xq#~@0123456789 ")))
        return "".join(chars).strip() or inst["model"]
    cut = int(rng.integers(6, 14))  # truncated
    return (title[:cut].strip() or inst["model"]) + "..."


def _table_pairs(cat: dict[str, Any], inst: dict[str, Any], rng: np.random.Generator) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if rng.random() < 0.95:
        pairs.append(("brand", inst["brand"]))
    if rng.random() < 0.85:
        pairs.append(("model", inst["model"]))
    if rng.random() < 0.5:
        pairs.append((str(rng.choice(["color", "colour"])), str(rng.choice(COLOURS[inst["colour"]][2]))))
    p_attr = 0.85 if rng.random() < 0.7 else 0.2  # some sellers fill in few attributes
    for k, v in inst["attrs"].items():
        if rng.random() < p_attr:
            pairs.append((k, v))
    noise = list(NOISE_KEYS)
    for k in rng.choice(noise, size=int(rng.integers(1, 5)), replace=False):
        pairs.append((str(k), str(rng.choice(NOISE_KEYS[str(k)]))))
    pairs = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    u = rng.random()
    fix = (lambda s: s) if u < 0.6 else (str.title if u < 0.9 else str.upper)
    return [(fix(k), v) for k, v in pairs]


# --------------------------------------------------------------------------- pixels


def _texture(inst: dict[str, Any], size: int) -> np.ndarray:
    p = np.array(COLOURS[inst["colour"]][1], np.float32)
    q = np.array(COLOURS[inst["colour2"]][1], np.float32)
    kind = inst["pattern"]
    if kind == "solid":
        return np.broadcast_to(p, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, per = inst["pat_angle"], inst["pat_period"]
    u = xx * np.cos(a) + yy * np.sin(a)
    v = -xx * np.sin(a) + yy * np.cos(a)
    if kind == "stripes":
        m = (u / per) % 1.0 < 0.5
    elif kind == "dots":
        du, dv = (u / per) % 1.0 - 0.5, (v / per) % 1.0 - 0.5
        m = du * du + dv * dv < 0.09
    elif kind == "checker":
        m = (np.floor(u / per) + np.floor(v / per)) % 2 == 0
    else:  # split: two-tone
        m = u < np.median(u)
    return np.where(m[..., None], q, p).astype(np.float32)


def _sprite(inst: dict[str, Any], shape: str, size: float, rng: np.random.Generator,
            cast: np.ndarray | None = None) -> Image.Image:
    """The object as RGBA: glyph mask, instance colour/pattern, this shot's shading."""
    size = max(8, int(size))
    mask = _canon_mask(shape).resize((size, size), Image.BILINEAR)
    tex = _texture(inst, size)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5) * 2
    a = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.08, 0.3) * (xx * np.cos(a) + yy * np.sin(a))
    tex = tex * shade[..., None]
    if cast is not None:
        tex = tex * cast
    m = np.asarray(mask, np.float32) / 255
    inner = np.asarray(mask.filter(ImageFilter.MinFilter(5)), np.float32) / 255
    rim = np.clip(m - inner, 0, 1)
    tex = tex * (1 - 0.45 * rim[..., None])
    rgba = np.dstack([np.clip(tex, 0, 255).astype(np.uint8), np.asarray(mask)])
    return Image.fromarray(rgba, "RGBA")


def _product_photo(cat: dict[str, Any], inst: dict[str, Any], rng: np.random.Generator) -> bytes:
    W = IMAGE_SIZE
    obj = [np.array(COLOURS[inst["colour"]][1], np.float32), np.array(COLOURS[inst["colour2"]][1], np.float32)]
    bg = Image.fromarray(np.clip(background(rng, W, W, obj), 0, 255).astype(np.uint8))
    scale = rng.uniform(0.55, 0.85)
    size = scale * W
    margin = max(0.0, (W - size) / 2)
    cx, cy = W / 2 + rng.uniform(-margin, margin), W / 2 + rng.uniform(-margin, margin)
    placed = place(_sprite(inst, cat["shape"], size, rng), W, size, float(rng.uniform(-35, 35)), cx, cy)
    paste(bg, placed, shadow=rng.random() < 0.6)
    out = Image.fromarray(light(np.asarray(bg, np.float32), rng))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(35, 96)))
    return buf.getvalue()


def _frames(cat: dict[str, Any], inst: dict[str, Any], rng: np.random.Generator, n: int) -> Iterable[Image.Image]:
    """``n`` RGB frames: the product's object moving over a panning background, lighting drifting."""
    W, pad = VIDEO_SIZE, 24
    obj = [np.array(COLOURS[inst["colour"]][1], np.float32), np.array(COLOURS[inst["colour2"]][1], np.float32)]
    cast = rng.uniform(0.9, 1.1, size=3).astype(np.float32)  # colour cast of this camera
    big = Image.fromarray(np.clip(background(rng, W + 2 * pad, W + 2 * pad, obj) * cast, 0, 255).astype(np.uint8))
    black = Image.new("RGB", (W, W))
    pan0, pan1 = rng.uniform(0, 2 * pad, size=2), rng.uniform(0, 2 * pad, size=2)
    s0 = rng.uniform(0.5, 0.72)
    s_amp, s_freq = rng.uniform(0, 0.12), rng.uniform(0.2, 0.8)
    base = _sprite(inst, cat["shape"], s0 * W * 1.15, rng, cast)
    path = int(rng.integers(3))
    room = max(0.06, (1 - s0 * (1 + s_amp)) / 2)  # how far the centre may move, object kept in frame
    p0 = W / 2 + rng.uniform(-room, room, size=2) * W
    p1 = W / 2 + rng.uniform(-room, room, size=2) * W
    rad, ph = rng.uniform(0.5, 1.0) * room * W, rng.uniform(0, 2 * np.pi)
    ang0, omega = rng.uniform(-30, 30), rng.uniform(-35, 35)
    gain0, gain1 = rng.uniform(0.75, 1.15, size=2)
    flicker = rng.uniform(0, 0.06)
    for i in range(n):
        t = i / max(n - 1, 1)
        sec = i / FPS
        off = pan0 + (pan1 - pan0) * t
        ox, oy = int(round(off[0])), int(round(off[1]))
        frame = big.crop((ox, oy, ox + W, oy + W))
        if path == 0:  # straight line
            c = p0 + (p1 - p0) * t
        elif path == 1:  # circle
            c = W / 2 + rad * np.array([np.cos(ph + 2 * np.pi * 0.4 * sec), np.sin(ph + 2 * np.pi * 0.4 * sec)])
        else:  # bounce
            c = p0 + (p1 - p0) * abs(np.sin(np.pi * 1.2 * t))
        s = s0 * (1 + s_amp * np.sin(2 * np.pi * s_freq * sec))
        paste(frame, place(base, W, s * W, float(ang0 + omega * sec), float(c[0]), float(c[1])), False)
        g = (gain0 + (gain1 - gain0) * t) * (1 + flicker * np.sin(2 * np.pi * 7 * sec))
        yield Image.blend(black, frame, float(g))  # exposure; above 1 it brightens (clipped)


# --------------------------------------------------------------------------- sound


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    """Moving average over ``k`` samples (centred), by cumulative sums."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    lo, hi = np.clip(i - k // 2, 0, len(x)), np.clip(i - k // 2 + k, 0, len(x))
    return (c[hi] - c[lo]) / np.maximum(hi - lo, 1)


def _sound(cat: dict[str, Any], inst: dict[str, Any], rng: np.random.Generator, seconds: float) -> np.ndarray:
    """The product sound (category pitch + timbre, instance pitch offset + rhythm) with nuisance."""
    n = int(round(seconds * AUDIO_SR))
    sid = cat["sound"]
    f0 = SOUND_F0[sid] * 2.0 ** (inst["pitch"] / 12.0)
    vib_rate, vib_depth = VIBRATO[sid % 3]
    offset = int(rng.uniform(0, 0.6) * AUDIO_SR)  # start offset (leading silence)
    m = max(n - offset, 1)
    t = np.arange(m, dtype=np.float64) / AUDIO_SR
    inst_f = f0 * (1 + vib_depth * np.sin(2 * np.pi * vib_rate * t))
    phase = 2 * np.pi * np.cumsum(inst_f) / AUDIO_SR
    tone = np.zeros(m)
    for ratio, amp in TIMBRES[sid % len(TIMBRES)]:
        if ratio * f0 < AUDIO_SR / 2 - 500:
            tone += amp * np.sin(ratio * phase + rng.uniform(0, 2 * np.pi))
    rate, duty = inst["rhythm"]
    if rate > 0:
        cyc = (t * rate + rng.uniform(0, 1)) % 1.0
        gate = (cyc < duty).astype(np.float64)
        k = max(1, int(0.01 * AUDIO_SR))
        gate = _smooth(gate, k)  # 10 ms edges, no clicks
        tone *= 0.15 + 0.85 * gate
    fade = min(m, int(0.02 * AUDIO_SR))
    tone[:fade] *= np.linspace(0, 1, fade)
    tone[m - fade:] *= np.linspace(1, 0, fade)
    tone *= rng.uniform(0.15, 0.8) / max(np.abs(tone).max(), 1e-9)  # gain
    sig = np.zeros(n)
    sig[n - m:] = tone
    snr_db = rng.uniform(6, 28)
    noise = rng.normal(0, 1, n)
    if rng.random() < 0.5:  # brown-ish room noise
        noise = np.cumsum(noise)
        noise -= _smooth(noise, 400)
    p_sig = float(np.mean(tone ** 2)) + 1e-12
    noise *= np.sqrt(p_sig / 10 ** (snr_db / 10) / (float(np.mean(noise ** 2)) + 1e-12))
    if rng.random() < 0.3:  # mains hum
        noise += 0.02 * np.sin(2 * np.pi * float(rng.choice([50.0, 60.0])) * np.arange(n) / AUDIO_SR)
    return np.clip(sig + noise, -1, 1).astype(np.float32)


# --------------------------------------------------------------------------- one product


def _make_demo_product(job: tuple[int, dict[str, Any], str]) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Write one product's media; return (index, JSONL record, status per modality)."""
    seed, spec, out = job
    root = Path(out)
    cat = CATEGORIES[spec["category"]]
    inst = _instance(seed, spec["category"], spec["instance"])
    missing = set(spec["missing"])
    # one child generator per modality: a modality's nuisance does not shift another's
    r_title, r_table, r_img, r_vid, r_aud, r_vaud, r_bad = seeded_rng(seed, 1, spec["index"]).spawn(7)
    rec: dict[str, Any] = {"id": spec["id"], "label": cat["name"], "instance": f"i{spec['instance']:05d}"}
    if "text" not in missing:
        rec["title"] = _product_title(seed, spec, cat, inst, r_title)
    if "table" not in missing:
        rec["table"] = _product_table(spec, cat, inst, r_table)
    if "image" not in missing:
        rec["image"] = _write_product_image(root, spec, cat, inst, r_img, r_bad)
    if "video" not in missing:
        rec["video"] = _write_product_video(root, spec, cat, inst, r_vid, r_vaud)
    if spec["standalone_audio"]:
        rec["audio"] = _write_product_wav(root, spec, cat, inst, r_aud)
    return spec["index"], rec, _statuses(spec)


def _statuses(spec: dict[str, Any]) -> dict[str, str]:
    """What extraction should find per modality: ok, failure (corrupt media) or absent. Audio
    without a WAV of its own is the video's sound track."""
    missing, corrupt = set(spec["missing"]), spec["corrupt"]
    status = {m: "absent" if m in missing else ("failure" if corrupt == m else "ok")
              for m in ("text", "table", "image", "video")}
    if spec["standalone_audio"]:
        status["audio"] = "failure" if corrupt == "audio" else "ok"
    else:
        status["audio"] = status["video"]
    return status


def _product_title(seed: int, spec: dict[str, Any], cat: dict[str, Any], inst: dict[str, Any],
                   rng: np.random.Generator) -> str:
    """The seller's title; a mismatched one describes another category's product."""
    title = _title(cat, inst, rng)
    if spec["title_mode"] == "mismatched":
        other = int((spec["category"] + rng.integers(1, len(CATEGORIES))) % len(CATEGORIES))
        fake = _instance(seed, other, 1_000_000 + spec["index"])
        title = _title(CATEGORIES[other], fake, rng)
    elif spec["title_mode"] == "noisy":
        title = _noisy_title(title, inst, rng)
    return title


def _product_table(spec: dict[str, Any], cat: dict[str, Any], inst: dict[str, Any],
                   rng: np.random.Generator) -> dict[str, str] | str:
    """The table as an object, or in the ``key#:#value#;#...`` string form."""
    pairs = _table_pairs(cat, inst, rng)
    return "#;#".join(f"{k}#:#{v}" for k, v in pairs) if spec["table_string"] else {k: v for k, v in pairs}


def _write_product_image(root: Path, spec: dict[str, Any], cat: dict[str, Any], inst: dict[str, Any],
                 rng: np.random.Generator, r_bad: np.random.Generator) -> str:
    """The product photo (garbage bytes when the image is the corrupt medium); its path."""
    rel = f"images/{spec['id']}.jpg"
    data = garbage_jpg(r_bad) if spec["corrupt"] == "image" else _product_photo(cat, inst, rng)
    (root / rel).write_bytes(data)
    return rel


def _write_product_video(root: Path, spec: dict[str, Any], cat: dict[str, Any], inst: dict[str, Any],
                 r_vid: np.random.Generator, r_vaud: np.random.Generator) -> str:
    """The product video with its sound track (truncated when it is the corrupt medium); its path."""
    rel = f"videos/{spec['id']}.mp4"
    n = int(round(r_vid.uniform(*VIDEO_SECONDS) * FPS))
    sound = _sound(cat, inst, r_vaud, n / FPS)
    write_video(root / rel, _frames(cat, inst, r_vid, n), sound)
    if spec["corrupt"] == "video":
        truncate_file(root / rel, keep=0.3)
    return rel


def _write_product_wav(root: Path, spec: dict[str, Any], cat: dict[str, Any], inst: dict[str, Any],
               rng: np.random.Generator) -> str:
    """The standalone recording (empty when audio is the corrupt medium); its path."""
    rel = f"audio/{spec['id']}.wav"
    if spec["corrupt"] == "audio":
        data = b"" if spec["empty_wav"] == "zero-bytes" else wav_bytes(None)
    else:
        data = wav_bytes(_sound(cat, inst, rng, float(rng.uniform(*WAV_SECONDS))))
    (root / rel).write_bytes(data)
    return rel


# --------------------------------------------------------------------------- the corpus


def _demo_stats(seed: int, specs: list[dict[str, Any]], records: list[dict[str, Any]],
           statuses: list[dict[str, str]]) -> dict[str, Any]:
    mods = {m: {"expected_ok": 0, "expected_failures": 0, "absent": 0} for m in MODALITIES}
    fail_ids: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for rec, st in zip(records, statuses):
        for m in MODALITIES:
            key = {"ok": "expected_ok", "failure": "expected_failures", "absent": "absent"}[st[m]]
            mods[m][key] += 1
            if st[m] == "failure":
                fail_ids[m].append(rec["id"])
    sizes: dict[str, int] = {}
    inst_count: dict[str, int] = {}
    for rec in records:
        sizes[rec["label"]] = sizes.get(rec["label"], 0) + 1
        inst_count[rec["instance"]] = inst_count.get(rec["instance"], 0) + 1
    listings = {str(k): sum(1 for v in inst_count.values() if v == k) for k in (1, 2, 3)}
    n = len(records)
    return {
        "generator": DEMO.generator, "version": DEMO.version, "seed": seed, "n_items": n,
        "n_categories": len(sizes), "n_instances": len(inst_count),
        "category_sizes": dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "instance_listings": listings,
        "modalities": mods,
        "totals": {
            "products": n,
            "expected_ok": sum(v["expected_ok"] for v in mods.values()),
            "expected_failures": sum(v["expected_failures"] for v in mods.values()),
            "absent": sum(v["absent"] for v in mods.values()),
            "complete_products": sum(all(s[m] == "ok" for m in MODALITIES) for s in statuses),
            "products_missing_a_modality": sum(any(s[m] == "absent" for m in MODALITIES) for s in statuses),
            "products_with_corrupt_media": sum(sp["corrupt"] is not None for sp in specs),
            "mismatched_titles": sum(sp["title_mode"] == "mismatched" for sp in specs),
            "noisy_titles": sum(sp["title_mode"] == "noisy" for sp in specs),
            "standalone_audio_files": sum(sp["standalone_audio"] for sp in specs),
            "tables_in_string_form": sum(isinstance(r.get("table"), str) for r in records),
        },
        "expected_failure_ids": fail_ids,
        "title_noise_ids": {
            "mismatched": [sp["id"] for sp in specs if sp["title_mode"] == "mismatched"],
            "noisy": [sp["id"] for sp in specs if sp["title_mode"] == "noisy"],
        },
        "confusable_categories": {"image": SHARED_SHAPES, "video": SHARED_SHAPES, "audio": SHARED_SOUNDS},
        "media": {"image_size": IMAGE_SIZE, "video_size": VIDEO_SIZE, "fps": FPS, "video_seconds": list(VIDEO_SECONDS),
                  "audio_sample_rate": AUDIO_SR, "video_codec": "h264/aac"},
    }


def make_corpus(out_dir: str | Path, n_items: int, seed: int = 0, *, workers: int | None = None,
                progress: bool = False, on_item: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write a demo corpus of ``n_items`` products under ``out_dir``; return its stats.

    ``workers`` processes (default: up to 2, never more than the CPUs) make the products; the
    output does not depend on it. ``progress`` shows a tqdm bar; ``on_item`` is called with
    the number of products finished so far. ``out_dir`` must be new, empty or hold an earlier
    demo corpus (which is replaced); any other non-empty directory is refused.
    """
    n_items, seed = check_request(DEMO, n_items, seed)
    out = Path(out_dir)
    specs = plan_corpus(n_items, seed)
    jobs = [(seed, s, str(out)) for s in specs]
    results = make_products(DEMO, out, _make_demo_product, jobs, workers=workers, progress=progress, on_item=on_item,
                            chunksize=2)
    records, statuses = [rec for _, rec, _ in results], [st for _, _, st in results]
    return finish(DEMO, out, _demo_stats(seed, specs, records, statuses))
