"""What the animals look like: genus body plans and patterns, each species' diagnostic mark, and
the renderer that draws one photo of an individual (pose, clutter, lighting, occlusion, noise).

Genera of one supercategory share a body plan and differ in pattern type and hue, so they are easy
to tell apart. Members of a genus are look-alikes: their colours, pattern and shape differ by less
than the individual variation (`subtlety`), and what separates them is ONE diagnostic mark, a
colour patch at the same spot on the body with a species-specific hue. When the mark is hidden
(an occluding leaf, `render(..., hide_mark=True)`), the photo shows only the genus: that is what
limits image-only accuracy, however long a model trains.
"""
from __future__ import annotations

import colorsys

import numpy as np

# Body plans, one per supercategory (distinct appearance families).
BODY_PLANS = ("Flora", "Coleoptera", "Pisces", "Lepidoptera", "Mollusca", "Aves")
PATTERNS = ("stripes", "bands", "spots", "rings", "checks")
# Where each body plan carries the diagnostic mark, in the object's local frame (on the body).
MARK_SPOTS = {"Flora": (0.0, 0.0), "Coleoptera": (0.0, 0.25), "Pisces": (0.15, 0.0),
              "Lepidoptera": (0.45, -0.3), "Mollusca": (0.3, 0.25), "Aves": (0.1, 0.02)}
MARK_HUE_JITTER = 0.02  # individual variation of the mark's hue (members are >= 1/4 of the circle apart)

# Per-parameter unit of individual variation. A species' mean sits `subtlety` units (per
# parameter, random sign and size) away from its genus mean: look-alikes overlap in appearance.
_TRAIT_UNITS = {"hue": 0.025, "pattern_hue": 0.03, "log_freq": 0.08, "coverage": 0.07, "shape": 0.06,
                "accent": 0.08}


def genus_appearance(rng, plan: str, pattern: str, hue: float) -> dict:
    return {
        "plan": plan,
        "pattern": pattern,
        "hue": hue, "sat": float(rng.uniform(0.45, 0.9)), "val": float(rng.uniform(0.5, 0.95)),
        "pattern_hue": float(rng.uniform()), "pattern_val": float(rng.uniform(0.2, 0.9)),
        "log_freq": float(np.log(rng.uniform(2.5, 6.0))), "coverage": float(rng.uniform(0.3, 0.6)),
        "shape": float(rng.uniform(0.3, 0.7)), "accent": float(rng.uniform(0.15, 0.35)),
        "accent_hue": float(rng.uniform()), "parts": int(rng.integers(4, 8)),
        "mark_radius": float(rng.uniform(0.18, 0.24)), "mark_hue": float(rng.uniform()),
    }


def species_appearance(genus: dict, rng, subtlety: float, member: int, members: int) -> dict:
    """Member `member` of `members`: small trait offsets, and its own mark hue, the members' hues
    spread evenly around the colour circle."""
    sp = dict(genus)
    for trait, unit in _TRAIT_UNITS.items():
        sp[trait] = float(genus[trait] + rng.normal(0.0, subtlety) * unit)
    sp["mark_hue"] = float((genus["mark_hue"] + member / members) % 1.0)
    return sp


def _individual(sp: dict, rng) -> dict:
    ind = dict(sp)
    for trait, unit in _TRAIT_UNITS.items():
        ind[trait] = sp[trait] + rng.normal(0.0, unit)
    ind["mark_hue"] = sp["mark_hue"] + rng.normal(0.0, MARK_HUE_JITTER)
    return ind


def _rgb(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _smooth_noise(rng, n, cells=4):
    """Low-frequency noise in [0, 1] on an n x n grid (bilinear upsampling of a coarse grid)."""
    coarse = rng.uniform(size=(cells + 1, cells + 1))
    x = np.linspace(0, cells, n)
    i = np.minimum(x.astype(int), cells - 1)
    f = x - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _silhouette(plan, u, v, ind):
    """(body mask, accent mask) in the object's local frame, for each body plan."""
    r = np.hypot(u, v)
    phi = np.arctan2(v, u)
    shape = ind["shape"]
    if plan == "Flora":  # petals
        boundary = 0.6 + (0.2 + 0.3 * shape) * np.cos(ind["parts"] * phi)
        return r < 0.75 * boundary + 0.15, r < ind["accent"] * 0.9
    if plan == "Coleoptera":  # oval beetle with a head
        body = (u / (0.45 + 0.2 * shape)) ** 2 + ((v - 0.1) / 0.75) ** 2 < 1
        head = u ** 2 + (v + 0.75) ** 2 < (0.2 + 0.3 * ind["accent"]) ** 2
        return body | head, head
    if plan == "Pisces":  # body + tail fin
        body = (u / 0.8) ** 2 + (v / (0.3 + 0.25 * shape)) ** 2 < 1
        tail = (u > 0.6) & (u < 1.0) & (np.abs(v) < (u - 0.6) * 1.6)
        eye = (u + 0.5) ** 2 + (v + 0.05) ** 2 < (0.05 + 0.15 * ind["accent"]) ** 2
        return body | tail, eye
    if plan == "Lepidoptera":  # two pairs of wings
        a = 0.35 + 0.2 * shape
        wings = np.zeros_like(u, dtype=bool)
        for side in (-1, 1):
            wings |= ((u - side * 0.45) / a) ** 2 + ((v + 0.3) / 0.45) ** 2 < 1
            wings |= ((u - side * 0.35) / (0.7 * a)) ** 2 + ((v - 0.4) / 0.35) ** 2 < 1
        body = (u / 0.08) ** 2 + (v / 0.8) ** 2 < 1
        eyes = np.minimum(np.hypot(np.abs(u) - 0.5, v + 0.3), 1.0) < 0.05 + 0.2 * ind["accent"]
        return wings | body, eyes | body
    if plan == "Mollusca":  # spiral shell
        spiral = np.sin(ind["parts"] * 0.6 * np.log(r + 1e-3) * 3 - phi) > 0.2 - shape
        return r < 0.8, (r < 0.8) & spiral & (r > 0.1)
    # Aves: body, head, beak, tail
    body = ((u - 0.05) / 0.55) ** 2 + (v / (0.3 + 0.15 * shape)) ** 2 < 1
    head = (u + 0.55) ** 2 + (v + 0.2) ** 2 < 0.22 ** 2
    beak = (u < -0.7) & (u > -0.95) & (np.abs(v + 0.2) < (u + 0.95) * 0.3)
    tail = (u > 0.5) & (u < 0.95) & (np.abs(v - 0.05) < 0.05 + (u - 0.5) * 0.4)
    cap = head & (v < -0.25 + 0.2 * ind["accent"])
    return body | head | beak | tail, cap | beak


def _pattern(kind, u, v, ind):
    """Where the pattern colour shows, in the object's local frame."""
    freq = np.exp(ind["log_freq"])
    cover = np.clip(ind["coverage"], 0.05, 0.95)
    if kind == "stripes":
        return (np.sin(np.pi * freq * u) + 1) / 2 < cover
    if kind == "bands":
        return (np.sin(np.pi * freq * v) + 1) / 2 < cover
    if kind == "rings":
        return (np.sin(np.pi * freq * np.hypot(u, v)) + 1) / 2 < cover
    if kind == "checks":
        return np.sin(np.pi * freq * u) * np.sin(np.pi * freq * v) > 1 - 2 * cover
    fu, fv = (freq * u / 2) % 1 - 0.5, (freq * v / 2) % 1 - 0.5  # spots
    return np.hypot(fu, fv) < 0.5 * np.sqrt(cover)


def _leaf_over(u, v, centre, radius, rng):
    """An elliptical leaf (local frame) that covers the whole disc of `radius` around `centre`:
    its centre is jittered by at most 0.15 radius and its short semi-axis is >= 1.3 radius."""
    jitter = radius * 0.15 * np.sqrt(rng.uniform()) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
    b = radius * rng.uniform(1.3, 1.6)
    a_axis = b * rng.uniform(1.2, 2.2)
    th = rng.uniform(0, np.pi)
    du, dv = u - centre[0] - jitter[0], v - centre[1] - jitter[1]
    ur, vr = du * np.cos(th) + dv * np.sin(th), -du * np.sin(th) + dv * np.cos(th)
    return (ur / a_axis) ** 2 + (vr / b) ** 2 < 1


def render(species: dict, rng, size: int, hide_mark: bool = False, supersample: int = 2) -> np.ndarray:
    """One photo of an individual of `species`: uint8 [size, size, 3]. `hide_mark` puts a leaf
    over the diagnostic mark."""
    ind = _individual(species, rng)
    n = size * supersample
    y, x = np.mgrid[0:n, 0:n].astype(np.float64)
    x = (x + 0.5) / n * 2 - 1
    y = (y + 0.5) / n * 2 - 1
    # Background: gradient between two colours, low-frequency texture, clutter shapes.
    c0, c1 = _rgb(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9)), _rgb(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.2, 0.9))
    t = _smooth_noise(rng, n, cells=int(rng.integers(2, 6)))[..., None]
    img = c0 * t + c1 * (1 - t)

    def clutter(count):
        nonlocal img
        for _ in range(count):
            cx, cy, a, b, th = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.05, 0.4), rng.uniform(0.02, 0.2), rng.uniform(0, np.pi)
            xr = (x - cx) * np.cos(th) + (y - cy) * np.sin(th)
            yr = -(x - cx) * np.sin(th) + (y - cy) * np.cos(th)
            mask = (xr / a) ** 2 + (yr / b) ** 2 < 1
            img = np.where(mask[..., None], _rgb(rng.uniform(), rng.uniform(0, 1), rng.uniform(0.1, 1)), img)

    clutter(int(rng.integers(1, 7)))
    # The animal: random pose (rotation within +-60 degrees of upright), scale and position.
    theta, scale = rng.uniform(-np.pi / 3, np.pi / 3), rng.uniform(0.5, 0.85)
    tx, ty = rng.uniform(-0.25, 0.25, size=2)
    u = ((x - tx) * np.cos(theta) + (y - ty) * np.sin(theta)) / scale
    v = (-(x - tx) * np.sin(theta) + (y - ty) * np.cos(theta)) / scale
    body, accent = _silhouette(ind["plan"], u, v, ind)
    pattern = _pattern(ind["pattern"], u, v, ind) & body & ~accent
    spot = MARK_SPOTS[ind["plan"]]
    mark = np.hypot(u - spot[0], v - spot[1]) < ind["mark_radius"]
    shade = (1.0 - 0.25 * np.clip(np.hypot(u, v), 0, 1))[..., None]  # some 3-D roundness
    img = np.where(body[..., None], _rgb(ind["hue"], ind["sat"], ind["val"]) * shade, img)
    img = np.where(pattern[..., None], _rgb(ind["pattern_hue"], 0.8, ind["pattern_val"]) * shade, img)
    img = np.where(accent[..., None], _rgb(ind["accent_hue"], 0.7, 0.6), img)
    img = np.where(mark[..., None], _rgb(ind["mark_hue"], 0.9, 0.85), img)
    if hide_mark:  # a leaf in front of the mark: the photo shows the genus, not the species
        leaf = _leaf_over(u, v, spot, ind["mark_radius"], rng)
        img = np.where(leaf[..., None], _rgb(rng.uniform(0.15, 0.45), rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.7)), img)
    if rng.uniform() < 0.3:  # a foreground leaf/twig somewhere, partly occluding the animal
        clutter(1)
    # Lighting: brightness, colour cast, a directional gradient; then sensor noise.
    gain = rng.uniform(0.65, 1.25) * rng.normal(1.0, 0.06, size=3)
    direction = rng.uniform(0, 2 * np.pi)
    img = img * gain * (1 + 0.25 * (np.cos(direction) * x + np.sin(direction) * y))[..., None]
    img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    img = img + rng.normal(0, rng.uniform(0.01, 0.04), size=img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
