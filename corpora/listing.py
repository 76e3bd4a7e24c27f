"""What a seller's listing is made of, in both corpora (demo.py, clipart.py): the title's
boilerplate and casing, the table keys that say nothing about the product, and the photo's
background, placement, shadow and light.

Every function draws from the generator it is given, in a fixed order: the corpora's bytes
depend on it.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# --------------------------------------------------------------------------- words

BOILER_PRE = ["HOT SALE", "2026 New Arrival", "NEW", "Free Shipping", "Official Store", "Best Seller",
              "Limited Offer", "Clearance", "Original", "Top Rated", "Wholesale", "Flash Deal"]
BOILER_SUF = ["free shipping", "fast delivery", "best gift", "high quality", "in stock", "dropshipping",
              "100% genuine", "for men women", "gift for him her", "2026 new arrival", "hot sale", "cheap price"]
NOISE_KEYS: dict[str, list[str]] = {
    "shipping": ["free shipping", "ships in 24h", "ships from local warehouse", "3-7 days delivery"],
    "warranty": ["6 months", "1 year", "2 years", "no warranty"],
    "seller rating": ["4.1", "4.3", "4.5", "4.6", "4.8", "4.9", "5.0"],
    "stock": ["in stock", "only 3 left", "pre-order", "in stock (200+)"],
    "origin": ["CN", "DE", "US", "VN", "IN", "TR", "PL"],
    "package": ["1 x item", "gift box", "retail box", "bulk packaging"],
    "certification": ["CE", "FCC", "RoHS", "CE / RoHS"],
    "payment": ["cash on delivery", "card", "instalments available"],
}


def seller_case(text: str, rng: np.random.Generator) -> str:
    """``text`` as sellers type it: upper case, lower case, title case or as it is."""
    u = rng.random()
    if u < 0.15:
        return text.upper()
    if u < 0.35:
        return text.lower()
    if u < 0.5:
        return text.title()
    return text


# --------------------------------------------------------------------------- pixels


def _far_colour(rng: np.random.Generator, avoid: Iterable[np.ndarray], min_dist: float = 110.0) -> np.ndarray:
    avoid = list(avoid)
    c = rng.uniform(0, 255, size=3)
    for _ in range(30):
        if all(np.linalg.norm(c - a) >= min_dist for a in avoid):
            break
        c = rng.uniform(0, 255, size=3)
    return c.astype(np.float32)


def background(rng: np.random.Generator, h: int, w: int, avoid: list[np.ndarray]) -> np.ndarray:
    """An h x w float RGB backdrop (solid, gradient, stripes, blotches or tiles, with noise and
    sometimes clutter) in a colour far from the colours in ``avoid``."""
    c1 = _far_colour(rng, avoid)
    c2 = np.clip(c1 + rng.uniform(-60, 60, size=3), 0, 255).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(5))
    if kind == 0:  # solid
        bg = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == 1:  # gradient
        a = rng.uniform(0, 2 * np.pi)
        t = (xx * np.cos(a) + yy * np.sin(a))
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == 2:  # stripes
        a, p = rng.uniform(0, np.pi), rng.uniform(6, 22)
        s = ((xx * np.cos(a) + yy * np.sin(a)) / p % 1.0 < 0.5)[..., None]
        bg = np.where(s, c1, 0.5 * (c1 + c2))
    elif kind == 3:  # blotches (low-frequency noise)
        g = rng.uniform(0, 1, size=(6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray((g * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32) / 255
        bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:  # tiles
        p = int(rng.integers(10, 28))
        s = (((xx // p) + (yy // p)) % 2 == 0)[..., None]
        bg = np.where(s, c1, 0.7 * c1 + 0.3 * c2)
    bg = bg + rng.normal(0, rng.uniform(2, 10), size=(h, w, 1)).astype(np.float32)
    if rng.random() < 0.35:  # small clutter in the scene
        im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, 0.09 * w)
            col = tuple(int(v) for v in rng.integers(0, 256, size=3))
            if rng.random() < 0.5:
                d.ellipse([x - r, y - r, x + r, y + r], fill=col)
            else:
                d.line([x - 2 * r, y, x + 2 * r, y + rng.uniform(-r, r)], fill=col, width=2)
        bg = np.asarray(im, np.float32)
    return bg.astype(np.float32)


def light(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image under this shot's light: a brightness gradient, a colour cast, sensor noise."""
    h, w = img.shape[:2]
    yy, xx = (np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w) - 0.5) * 2
    a = rng.uniform(0, 2 * np.pi)
    field = rng.uniform(0.7, 1.2) * (1 + rng.uniform(0, 0.35) * (xx * np.cos(a) + yy * np.sin(a)))
    cast = rng.uniform(0.88, 1.12, size=3).astype(np.float32)
    out = img * field[..., None] * cast + rng.normal(0, rng.uniform(1, 6), size=img.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def place(sprite: Image.Image, canvas: int, size: float, angle: float, cx: float, cy: float) -> Image.Image:
    """The sprite scaled to ``size`` px, rotated by ``angle`` degrees and centred at (cx, cy), as an RGBA
    canvas (one affine resampling instead of resize + rotate + crop)."""
    S = sprite.width
    k = max(size, 1.0) / S
    th = np.deg2rad(angle)
    a, b = np.cos(th) / k, np.sin(th) / k
    d, e = -np.sin(th) / k, np.cos(th) / k
    data = (a, b, S / 2 - a * cx - b * cy, d, e, S / 2 - d * cx - e * cy)
    return sprite.transform((canvas, canvas), Image.AFFINE, data=tuple(float(v) for v in data),
                            resample=Image.BILINEAR)


def paste(bg: Image.Image, placed: Image.Image, shadow: bool) -> None:
    """``placed`` (a canvas from :func:`place`) over ``bg``, with a soft drop shadow if ``shadow``."""
    alpha = placed.getchannel("A")
    if shadow:
        sh = alpha.filter(ImageFilter.GaussianBlur(3)).point(lambda v: int(v * 0.4))
        bg.paste((0, 0, 0), (4, 5), sh)
    bg.paste(placed, (0, 0), alpha)
