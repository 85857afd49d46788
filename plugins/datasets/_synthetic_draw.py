"""Procedural H&E-like nuclei images for the ``synthetic`` dataset.

Every image is drawn from its own random generator (seeded by dataset seed, stream and index),
so the result of one image does not depend on how many others are drawn or in which order.

Colour model: stain concentrations are composed per pixel (hematoxylin ``h`` and eosin ``e``)
and turned into RGB with the Beer-Lambert law, ``rgb = 255 * exp(-(h * H + e * E))``, which gives
pink eosin stroma and blue-purple hematoxylin nuclei the way a brightfield scan does.

Nuclei are drawn all at once per image: every nucleus gets a square box of pixels around its
centre, its shape test and stain values are computed for all boxes in one vectorised pass, and
overlaps are resolved by drawing order (a later nucleus wins a pixel in the image, the instance
map and the class map alike).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
NEO, INFL, CONN, DEAD, EPI = 1, 2, 3, 4, 5

#: Optical density per unit stain concentration (R, G, B).
H_OD = np.array([0.95, 1.15, 0.45])
E_OD = np.array([0.08, 0.85, 0.42])

#: Nuclei per 64x64 pixels when the density is not given (scaled with image area).
DEFAULT_DENSITY = (6, 16)


@dataclass(frozen=True)
class TissueProfile:
    mix: tuple[float, ...]  # class probabilities (neo, infl, conn, dead, epi)
    eosin: float  # background eosin concentration
    hema: float  # background hematoxylin tint
    fibre: float  # strength of fibrous stroma texture (0..1)
    pale: float  # fraction of pale (fat / air / lumen) background


_KNOWN = {
    "breast": TissueProfile((0.30, 0.12, 0.28, 0.06, 0.24), 0.62, 0.06, 0.75, 0.14),
    "colon": TissueProfile((0.32, 0.26, 0.08, 0.06, 0.28), 0.72, 0.10, 0.35, 0.05),
    "lung": TissueProfile((0.22, 0.34, 0.24, 0.10, 0.10), 0.52, 0.08, 0.50, 0.25),
}


def tissue_profile(name: str) -> TissueProfile:
    """Class mix and background look of a tissue; unknown names get a stable, hashed profile."""
    if name.lower() in _KNOWN:
        return _KNOWN[name.lower()]
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    mix = 0.06 + 0.70 * rng.dirichlet(np.full(5, 3.0))
    mix = mix / mix.sum()
    return TissueProfile(tuple(float(m) for m in mix), float(rng.uniform(0.5, 0.75)),
                         float(rng.uniform(0.05, 0.11)), float(rng.uniform(0.3, 0.8)),
                         float(rng.uniform(0.03, 0.25)))


def density_range(nuclei_per_image: tuple[int, int] | None, image_size: int,
                  size: int) -> tuple[int, int]:
    """Nuclei count range for an image of ``size`` pixels: the configured range applies to
    ``image_size`` and scales with area; ``None`` means :data:`DEFAULT_DENSITY` per 64x64."""
    if nuclei_per_image is None:
        base, ref = DEFAULT_DENSITY, 64
    else:
        base, ref = nuclei_per_image, image_size
    scale = (size / ref) ** 2
    lo = int(round(base[0] * scale))
    return lo, max(lo, int(round(base[1] * scale)))


# --- per-class nucleus parameters --------------------------------------------------------------
# index 0 is unused (background) so that arrays can be indexed by class id.
#                        -    neo   infl  conn  dead  epi
_A_LO = np.array([0.0, 5.0, 2.3, 6.0, 2.8, 4.0])  # semi-major axis range (pixels)
_A_HI = np.array([0.0, 7.5, 3.2, 9.5, 3.8, 5.2])
_B_LO = np.array([0.0, 0.70, 0.85, 0.0, 0.80, 0.65])  # minor / major ratio (conn: absolute)
_B_HI = np.array([0.0, 0.95, 1.00, 0.0, 1.00, 0.85])
_POW = np.array([2.0, 2.0, 2.0, 1.0, 2.0, 2.0])  # 1 = pointed spindle, 2 = ellipse
_IRREG = np.array([0.0, 0.30, 0.00, 0.00, 0.16, 0.00])  # boundary roughness
_HEMA = np.array([0.0, 1.60, 2.30, 1.20, 0.22, 0.72])  # hematoxylin in the nucleus body
_EOS = np.array([0.0, 0.30, 0.22, 0.15, 1.35, 0.35])  # eosin in the nucleus body
_SPECKLE = np.array([0.0, 0.45, 0.06, 0.12, 0.05, 0.30])  # chromatin texture amplitude
_RIM = np.array([0.0, 0.15, 0.00, 0.00, 0.00, 0.35])  # darker nuclear membrane
_HARM_WEIGHT = np.array([1.0, 0.7, 0.5, 0.4])


def _smooth_noise(rng: np.random.Generator, size: int, sigmas: tuple[float, ...]) -> np.ndarray:
    """Gaussian-smoothed white noise (periodic), one unit-variance field per sigma, filtered
    in one FFT pass: ``(len(sigmas), size, size)``."""
    noise = rng.standard_normal((len(sigmas), size, size), dtype=np.float32)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f2 = fy * fy + fx * fx
    sig = np.asarray(sigmas, dtype=np.float64)[:, None, None]
    gain = np.exp(-2.0 * np.pi ** 2 * sig ** 2 * f2).astype(np.float32)
    import scipy.fft  # scipy on use: `harness validate`/`list` import this module

    fields = scipy.fft.irfft2(scipy.fft.rfft2(noise) * gain, s=(size, size)).astype(np.float64)
    return fields / (fields.std(axis=(1, 2), keepdims=True) + 1e-8)


def _place(rng: np.random.Generator, size: int, classes: np.ndarray, radius: np.ndarray,
           count: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-overlapping choice among candidates (they touch at most slightly)."""
    n = len(classes)
    # Half the candidates cluster around a few seeds (cells come in groups), half are uniform.
    seeds = rng.uniform(0, size, (int(rng.integers(1, 4)), 2))
    near = seeds[rng.integers(0, len(seeds), n)] + rng.normal(0, size / 6, (n, 2))
    uniform = rng.uniform(-2, size + 2, (n, 2))
    centres = np.where(rng.random(n)[:, None] < 0.5, near, uniform)
    centres = np.clip(centres, -2, size + 2)
    d2 = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    conflict = d2 < (0.95 * (radius[:, None] + radius[None, :])) ** 2
    blocked = np.zeros(n, dtype=bool)
    chosen = []
    for i in range(n):
        if blocked[i]:
            continue
        chosen.append(i)
        if len(chosen) == count:
            break
        blocked |= conflict[i]
    idx = np.asarray(chosen, dtype=np.int64)
    return idx, centres[idx]


def _rasterize(size, centres, a, b, angle, power, amps, phases):
    """Shape test for a group of nuclei of one class over a square box around each centre.

    Returns local coordinates (``lx``, ``ly``), pixel coordinates (``px`` (m,1,S), ``py``
    (m,S,1)), the normalised radius ``rho`` (< 1 inside) and the ``inside`` mask (m,S,S)."""
    reach = int(np.ceil((a * (1 + amps.sum(1))).max())) + 1
    offs = np.arange(-reach, reach + 1)
    base = np.floor(centres).astype(np.int64)  # (m, 2) as (x, y)
    px = base[:, 0, None, None] + offs[None, None, :]
    py = base[:, 1, None, None] + offs[None, :, None]
    lx = px + 0.5 - centres[:, 0, None, None]
    ly = py + 0.5 - centres[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    ua = (lx * cos + ly * sin) / a[:, None, None]
    vb = (ly * cos - lx * sin) / b[:, None, None]
    shape = ua * ua + vb * vb if power == 2.0 else np.abs(ua) ** power + vb * vb
    rho = np.sqrt(shape)
    if amps.any():  # irregular outline: radius modulated by harmonics 2..5 of the angle
        z = (ua + 1j * vb) / np.maximum(np.hypot(ua, vb), 1e-9)
        zk = z * z
        wobble = np.ones_like(rho)
        for k in range(amps.shape[1]):
            coef = amps[:, k] * np.exp(1j * phases[:, k])
            wobble += (coef[:, None, None] * zk).real
            zk = zk * z
        rho = rho / wobble
    inside = (rho < 1.0) & (px >= 0) & (px < size) & (py >= 0) & (py < size)
    return lx, ly, px, py, rho, inside


def _place_crowded(rng: np.random.Generator, size: int, mix: np.ndarray, count: int,
                   crowding: float, scale: float) -> tuple[np.ndarray, ...]:
    """Candidates for a crowded image (``crowding`` > 0): centres first, mostly in clusters
    (``0.5 + 0.5 * crowding`` of them) whose nuclei share the cluster's class with probability
    ``crowding``; then sizes from the classes; then the greedy choice of :func:`_place` with the
    non-overlap distance shrunk by ``1 - 0.4 * crowding``, so neighbours touch and overlap a
    little (the later one wins the shared pixels). Returns ``cls, a, b, centres``."""
    n = 2 * count + 8
    seeds = rng.uniform(0, size, (int(rng.integers(1, 4)), 2))
    seed_cls = rng.choice(np.arange(1, 6), size=len(seeds), p=mix)
    which = rng.integers(0, len(seeds), n)
    near = seeds[which] + rng.normal(0, size / 8, (n, 2))
    clustered = rng.random(n) < 0.5 + 0.5 * crowding
    centres = np.clip(np.where(clustered[:, None], near, rng.uniform(-2, size + 2, (n, 2))),
                      -2, size + 2)
    cls = rng.choice(np.arange(1, 6), size=n, p=mix)
    cls = np.where(clustered & (rng.random(n) < crowding), seed_cls[which], cls)
    a = rng.uniform(_A_LO[cls], _A_HI[cls])
    ratio = rng.uniform(_B_LO[cls], _B_HI[cls])
    b = np.where(cls == CONN, rng.uniform(1.3, 2.0, n), a * ratio)
    a, b = a * scale, b * scale
    radius = 0.5 * (a + b)
    d2 = ((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    conflict = d2 < (0.95 * (1.0 - 0.4 * crowding) * (radius[:, None] + radius[None, :])) ** 2
    blocked = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    for i in range(n):
        if not blocked[i]:
            chosen.append(i)
            if len(chosen) == count:
                break
            blocked |= conflict[i]
    idx = np.asarray(chosen, dtype=np.int64)
    return cls[idx], a[idx], b[idx], centres[idx]


def draw_image(rng: np.random.Generator, size: int, tissue: TissueProfile,
               count_range: tuple[int, int], crowding: float = 0.0, scale: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``size`` x ``size`` image: RGB uint8, instance map int32, class map uint8;
    ``crowding`` > 0 places nuclei in touching same-class clusters (:func:`_place_crowded`),
    0 draws exactly what this function drew before the option existed; ``scale`` multiplies
    every nucleus's axes (1: as before). The random draws are made in a fixed order (background,
    nucleus count, layout, shapes, noise), so a seed gives the same image on every machine."""
    from scipy.ndimage import gaussian_filter  # scipy on use: `harness validate`/`list` import this module

    stain, hema, eos, chroma = _background(rng, size, tissue)
    instances = np.zeros((size, size), dtype=np.int32)
    classes = np.zeros((size, size), dtype=np.uint8)
    lo, hi = count_range
    count = int(rng.integers(lo, hi + 1))
    if count > 0:
        mix = rng.dirichlet(np.asarray(tissue.mix) * 25.0)
        if crowding > 0:
            cls, a, b, centres = _place_crowded(rng, size, mix, count, crowding, scale)
        else:
            cls, a, b, centres = _place_sparse(rng, size, mix, count, scale)
        shapes = _nucleus_shapes(rng, cls, a, b, stain[0])
        parts = [_class_part(c, np.flatnonzero(cls == c), size, centres, a, b, shapes, chroma, stain)
                 for c in range(1, 6) if (cls == c).any()]
        _paint(parts, len(cls), cls, hema, eos, instances, classes)

    # --- compose ------------------------------------------------------------------------------
    hema = gaussian_filter(hema, 0.45)
    eos = gaussian_filter(np.maximum(eos, 0.0), 0.45)
    od = hema[..., None] * H_OD + eos[..., None] * E_OD
    rgb = 255.0 * np.exp(-od) + 2.5 * rng.standard_normal((size, size, 3), dtype=np.float32)
    image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return image, instances, classes


def _background(rng: np.random.Generator, size: int, tissue: TissueProfile
                ) -> tuple[tuple[float, float], np.ndarray, np.ndarray, np.ndarray]:
    """Eosin stroma with fibres, pale spaces and a faint hematoxylin tint: the per-image stain
    factors (hematoxylin, eosin), the hematoxylin and eosin densities and the chromatin noise
    the nuclei use."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    stain_h = rng.uniform(0.93, 1.07)  # per-image stain variation
    stain_e = rng.uniform(0.90, 1.10)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(4.0, 8.0)
    warp, patchy, low, pale_noise, chroma = _smooth_noise(rng, size, (5.0, 4.0, 7.0, 6.0, 0.8))
    warp = warp * rng.uniform(1.5, 3.0)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    fibres = (0.5 + 0.5 * np.cos(2 * np.pi * along / period + warp)) ** 4
    fibres = fibres * (0.6 + 0.4 * np.tanh(patchy))
    threshold = np.quantile(pale_noise, 1.0 - tissue.pale * rng.uniform(0.2, 1.3))
    pale = 1.0 / (1.0 + np.exp(-(pale_noise - threshold) / 0.12))
    eos = tissue.eosin * stain_e * (1.0 + 0.12 * low) * (
        1.0 - 0.30 * tissue.fibre + 0.75 * tissue.fibre * fibres)
    eos = eos * (1.0 - 0.85 * pale) + 0.05 * rng.standard_normal((size, size)) * (1.0 - pale)
    hema = tissue.hema * stain_h * (1.0 + 0.3 * low) * (1.0 - 0.8 * pale)
    return (stain_h, stain_e), hema, eos, chroma


def _place_sparse(rng: np.random.Generator, size: int, mix: np.ndarray, count: int, scale: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classes, axes and centres of up to ``count`` nuclei placed apart (:func:`_place`)."""
    ncand = 2 * count + 8
    cls = rng.choice(np.arange(1, 6), size=ncand, p=mix)
    a = rng.uniform(_A_LO[cls], _A_HI[cls])
    ratio = rng.uniform(_B_LO[cls], _B_HI[cls])
    b = np.where(cls == CONN, rng.uniform(1.3, 2.0, ncand), a * ratio)
    if scale != 1.0:
        a, b = a * scale, b * scale
    idx, centres = _place(rng, size, cls, 0.5 * (a + b), count)
    return cls[idx], a[idx], b[idx], centres


def _nucleus_shapes(rng: np.random.Generator, cls: np.ndarray, a: np.ndarray, b: np.ndarray,
                    stain_h: float) -> dict[str, np.ndarray]:
    """Per nucleus: orientation, contour harmonics, hematoxylin, the epithelial nucleolus and
    the dead-cell fragments (offsets from the centre)."""
    m = len(cls)
    return {
        "angle": rng.uniform(0, np.pi, m),
        "amps": _IRREG[cls][:, None] * rng.uniform(0, 1, (m, 4)) * _HARM_WEIGHT,
        "phases": rng.uniform(0, 2 * np.pi, (m, 4)),
        "hval": _HEMA[cls] * rng.normal(1.0, 0.06, m) * stain_h,
        "nucleolus": rng.normal(0, 0.25, (m, 2)) * b[:, None],
        "nucleolus_r": rng.uniform(0.9, 1.3, m),
        "frags": rng.uniform(-0.55, 0.55, (m, 3, 2)) * a[:, None, None],
        "frag_r": rng.uniform(0.7, 1.2, (m, 3)),
        "nfrag": rng.integers(1, 4, m),
    }


def _class_part(c: int, sel: np.ndarray, size: int, centres: np.ndarray, a: np.ndarray,
                b: np.ndarray, shapes: dict[str, np.ndarray], chroma: np.ndarray,
                stain: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """The pixels of the nuclei ``sel`` of class ``c``: (pixel index, drawing order,
    hematoxylin, eosin)."""
    stain_h, stain_e = stain
    lx, ly, px, py, rho, inside = _rasterize(size, centres[sel], a[sel], b[sel], shapes["angle"][sel],
                                             _POW[c], shapes["amps"][sel], shapes["phases"][sel])
    pix = (np.clip(py, 0, size - 1) * size + np.clip(px, 0, size - 1))
    pix = np.broadcast_to(pix, inside.shape)[inside]
    speckle = np.clip(1.0 + _SPECKLE[c] * chroma.flat[pix], 0.5, 2.0)
    h = np.broadcast_to(shapes["hval"][sel, None, None], inside.shape)[inside] * speckle
    if _RIM[c]:
        h = h * (1.0 + _RIM[c] * (rho[inside] > 0.72))
    if c == EPI:  # a visible nucleolus
        nucleolus = shapes["nucleolus"]
        dn = np.hypot(lx - nucleolus[sel, 0, None, None], ly - nucleolus[sel, 1, None, None])
        h = h + 1.5 * stain_h * (dn < shapes["nucleolus_r"][sel, None, None])[inside]
    if c == DEAD:  # pyknotic fragments in an eosinophilic halo
        frags = shapes["frags"]
        fx, fy = frags[sel, :, 0, None, None], frags[sel, :, 1, None, None]
        dfrag = np.hypot(lx[:, None] - fx, ly[:, None] - fy) - shapes["frag_r"][sel, :, None, None]
        used = (np.arange(3)[None, :] < shapes["nfrag"][sel, None])[:, :, None, None]
        hit = ((dfrag < 0) & used).any(1)
        h = h + 2.3 * stain_h * hit[inside]
    order = np.broadcast_to(sel[:, None, None], inside.shape)[inside]
    return pix, order, h, np.full(len(h), _EOS[c] * stain_e)


def _paint(parts: list[tuple[np.ndarray, ...]], m: int, cls: np.ndarray, hema: np.ndarray,
           eos: np.ndarray, instances: np.ndarray, classes: np.ndarray) -> None:
    """Write the nuclei's pixels into the maps (in place); later nuclei win: sort by (pixel,
    order) and keep the last entry of each pixel."""
    pix, order, h, e = (np.concatenate(x) for x in zip(*parts))
    srt = np.argsort(pix * m + order)
    pix_s = pix[srt]
    last = np.ones(len(pix_s), dtype=bool)
    last[:-1] = pix_s[1:] != pix_s[:-1]
    pick = srt[last]
    pix, win = pix[pick], order[pick]
    hema.flat[pix] = h[pick]
    eos.flat[pix] = e[pick]
    instances.flat[pix] = win + 1
    classes.flat[pix] = cls[win]


def draw_set(seed: int, stream: int, size: int, tissues: list[str],
             count_range: tuple[int, int], crowding: float = 0.0, scale: float = 1.0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images for a list of tissue names (one image each); ``stream`` separates independent
    sets (e.g. each fold, the unlabeled tiles) drawn from the same seed."""
    n = len(tissues)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    instances = np.empty((n, size, size), dtype=np.int32)
    classes = np.empty((n, size, size), dtype=np.uint8)
    profiles = {t: tissue_profile(t) for t in set(tissues)}
    for i, tissue in enumerate(tissues):
        rng = np.random.default_rng([seed, stream, i])
        images[i], instances[i], classes[i] = draw_image(rng, size, profiles[tissue], count_range,
                                                         crowding, scale)
    return images, instances, classes
