"""The survey's reference catalogue: built by blind source finding on deep mosaics.

:func:`build_from_mosaic` runs :func:`contimg.sourcefind.find_sources_fits` on
a mosaic and its noise map and merges the detections into the ``sources``
table of the products database (:func:`merge_detections`):

- detections below ``survey.catalogue_min_snr`` are left out;
- a detection within ``survey.match_radius_beams`` restoring-beam majors of a
  catalogue source *is* that source (nearest first, one detection per source
  and mosaic): its detection count goes up, and its position and flux are
  replaced when the new measurement is more precise (a deeper mosaic);
- any other detection is a new source, named ``J{HHMMSS.s}{+DDMMSS}`` from
  its position (truncated, IAU style) and never renamed, so ids are stable as
  the survey deepens; a clash gets a letter suffix.

Merging the same mosaic twice changes nothing (each source remembers the
mosaics that detected it). After each merge the flux-scale references are
re-selected over the whole catalogue (:func:`select_references`): mosaic SNR
at least ``survey.reference_min_snr``, a clean single-component fit, no other
catalogue source within ``survey.blend_beams`` beam majors, and not marked
variable (:func:`mark_variable`, from the light curves).

:func:`catalogue_table` and :func:`export` give the catalogue as an astropy
Table, ECSV or VOTable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import database as db
from .config import SurveyConfig
from .errors import PermanentError
from .fitsimage import read_plane
from .products import MosaicProducts, parse_mosaic_fits
from .sourcefind import AT_EDGE, LARGE_ISLAND, MOMENTS, MULTIPLE, FinderSettings

UNCLEAN_FINDER_FLAGS = MOMENTS | MULTIPLE | AT_EDGE | LARGE_ISLAND
"""Finder flags that keep a source from being a flux-scale reference."""

EXPORT_COLUMNS = [
    ("source_id", None, "catalogue id (stable)"),
    ("name", None, "J{HHMMSS.s}{+DDMMSS} from the first catalogued position"),
    ("ra", "deg", "right ascension (ICRS) of the best measurement"),
    ("dec", "deg", "declination (ICRS)"),
    ("ra_err", "arcsec", "1-sigma error of ra (on the sky)"),
    ("dec_err", "arcsec", "1-sigma error of dec"),
    ("flux", "Jy", "peak flux density of the best measurement (Jy/beam = Jy for a point source)"),
    ("flux_err", "Jy", "1-sigma error of flux"),
    ("snr", None, "signal-to-noise ratio on the mosaic of the best measurement"),
    ("first_seen", None, "mosaic of the first detection"),
    ("best_mosaic", None, "mosaic of the best (most precise) measurement"),
    ("n_detections", None, "mosaics that detected the source"),
    ("is_reference", None, "used for the per-block relative flux scale"),
]


@dataclass
class CatalogueUpdate:
    """What one merge did."""

    mosaic: str
    n_detections: int
    """Detections at or above catalogue_min_snr."""
    n_matched: int
    n_new: int
    n_improved: int
    """Matched sources whose position and flux were replaced by the more precise new measurement."""
    n_total: int
    n_references: int
    new_names: list[str] = field(default_factory=list)
    noise_factor: float = 1.0
    """The mosaic's noise map was multiplied by this (its image/noise scatter) before finding sources."""

    def as_dict(self) -> dict:
        return asdict(self)


def source_name(ra_deg: float, dec_deg: float) -> str:
    """IAU-style name ``J{HHMMSS.s}{+DDMMSS}``, truncated (not rounded), e.g. ``J095959.9+543600``."""
    ra_s = (ra_deg % 360.0) / 15.0 * 3600.0
    ra_ds = math.floor(ra_s * 10 + 1e-6)  # tenths of a second of time
    hh, rem = divmod(ra_ds, 36000)
    mm, rem = divmod(rem, 600)
    sign = "-" if dec_deg < 0 else "+"
    dec_as = math.floor(abs(dec_deg) * 3600.0 + 1e-6)
    dd, rem2 = divmod(dec_as, 3600)
    dm, ds = divmod(rem2, 60)
    return f"J{hh:02d}{mm:02d}{rem // 10:02d}.{rem % 10:d}{sign}{dd:02d}{dm:02d}{ds:02d}"


def separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation (haversine), degrees, broadcasting."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def nearest(ra, dec, cat_ra, cat_dec) -> tuple[np.ndarray, np.ndarray]:
    """Index of and separation (deg) to the nearest catalogue position, for each position (unit vectors + KD-tree)."""
    from scipy.spatial import cKDTree

    ra, dec = np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float))
    if len(cat_ra) == 0:
        return np.full(ra.size, -1), np.full(ra.size, np.inf)
    tree = cKDTree(_unit(cat_ra, cat_dec))
    chord, idx = tree.query(_unit(ra, dec))
    return idx, np.degrees(2 * np.arcsin(np.clip(chord / 2, 0, 1)))


def _unit(ra, dec) -> np.ndarray:
    r, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.c_[np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)]


def build_from_mosaic(url: str, image_fits: str | Path, noise_fits: str | Path | None = None, *,
                      settings: SurveyConfig | None = None, finder: FinderSettings = FinderSettings(),
                      mosaic: str | None = None) -> CatalogueUpdate:
    """Find the sources of a mosaic and merge them into the reference catalogue.

    Parameters
    ----------
    url : str
        Products database URL.
    image_fits : path
        The mosaic image (or any image with BMAJ/BMIN/BPA).
    noise_fits : path, optional
        Its noise map; default the mosaic's ``noise`` product beside it when
        ``image_fits`` is a mosaic product, else the image's robust rms.
    mosaic : str, optional
        Label recorded as first_seen / best_mosaic; default the mosaic id
        (or the file name).
    """
    settings = settings if settings is not None else SurveyConfig()
    from .sourcefind import find_sources_fits

    image_fits = Path(image_fits)
    if not image_fits.is_file():
        raise PermanentError(f"{image_fits} does not exist; make the mosaic first (contimg.mosaic.make_mosaic)")
    parsed = parse_mosaic_fits(image_fits)
    if noise_fits is None and parsed is not None:
        candidate = MosaicProducts(image_fits.parent, parsed[0]).noise_fits
        noise_fits = candidate if candidate.is_file() else None
    label = mosaic or (parsed[0] if parsed else image_fits.name.removesuffix(".fits"))
    k = noise_map_factor(image_fits, noise_fits) if noise_fits is not None else 1.0
    if k > NOISE_FACTOR_TOLERANCE:
        # The map assumes independent block noises; blocks that share their uv
        # coverage (one field at one LST on many days) share their deconvolution
        # residuals, which do not average down. Trust the measured scatter.
        table = _find_with_factor(image_fits, noise_fits, finder, k)
    else:
        k = 1.0
        table = find_sources_fits(image_fits, noise_fits, finder)
    beam_major_deg = float(table.meta["beam_major_arcsec"]) / 3600.0
    upd = merge_detections(url, table, label, beam_major_deg, settings)
    upd.noise_factor = k
    return upd


NOISE_FACTOR_TOLERANCE = 1.1
"""A mosaic whose signal-to-noise map scatters this much more than 1 has its noise map scaled up."""


def noise_map_factor(image_fits: str | Path, noise_fits: str | Path) -> float:
    """Robust standard deviation (1.4826 MAD) of image / noise: 1 when the noise map is right.

    Sources occupy a small fraction of the pixels, so the median statistics see the noise.
    """
    _, image = read_plane(image_fits, todo="make the mosaic first")
    _, noise = read_plane(noise_fits, todo="make the mosaic first")
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = image / noise
    snr = snr[np.isfinite(snr)]
    if snr.size < 100:
        return 1.0
    return float(1.4826 * np.median(np.abs(snr - np.median(snr))))


def _find_with_factor(image_fits, noise_fits, finder: FinderSettings, k: float):
    """:func:`contimg.sourcefind.find_sources` with the noise map times ``k``."""
    from astropy.wcs import WCS

    from .sourcefind import find_sources

    h, image = read_plane(image_fits, todo="make the mosaic first")
    _, noise = read_plane(noise_fits, todo="make the mosaic first")
    table = find_sources(image, WCS(h).celestial, (h["BMAJ"], h["BMIN"], h["BPA"]), noise * k, finder)
    table.meta.update(image=str(image_fits), noise_map=f"{noise_fits} x {k:.3f} (measured scatter of image/noise)")
    return table


def merge_detections(url: str, table, mosaic: str, beam_major_deg: float,
                     settings: SurveyConfig | None = None) -> CatalogueUpdate:
    """Merge a finder table (:data:`contimg.sourcefind.COLUMNS`) into the catalogue (module docstring)."""
    settings = settings if settings is not None else SurveyConfig()
    snr = np.asarray(table["snr"], float) if len(table) else np.zeros(0)
    keep = np.flatnonzero(snr >= settings.catalogue_min_snr)
    # Brightest first, so a clash of two detections over one source keeps the brighter as the match.
    keep = keep[np.argsort(-snr[keep])]
    existing = db.catalogue_sources(url)
    cat_ra = np.array([s["ra_deg"] for s in existing])
    cat_dec = np.array([s["dec_deg"] for s in existing])
    radius = settings.match_radius_beams * beam_major_deg
    col = {c: np.asarray(table[c], float) for c in ("ra", "dec", "ra_err", "dec_err", "peak_flux",
                                                     "peak_flux_err", "snr")} if len(table) else {}
    flags = np.asarray(table["flags"], int) if len(table) else np.zeros(0, int)
    idx, sep = nearest(col["ra"][keep], col["dec"][keep], cat_ra, cat_dec) if keep.size else ([], [])
    taken: set[int] = set()
    names = {s["name"] for s in existing}
    updates, new = [], []
    n_matched = n_improved = 0
    for j, k, d in zip(keep, idx, sep):
        meas = dict(ra_deg=float(col["ra"][j]), dec_deg=float(col["dec"][j]), ra_err_arcsec=float(col["ra_err"][j]),
                    dec_err_arcsec=float(col["dec_err"][j]), flux_jy=float(col["peak_flux"][j]),
                    flux_err_jy=float(col["peak_flux_err"][j]), snr=float(col["snr"][j]))
        finder = {"finder_flags": int(flags[j]), "beam_major_deg": beam_major_deg}
        if k >= 0 and d <= radius and int(k) not in taken:
            taken.add(int(k))
            n_matched += 1
            src = existing[int(k)]
            details = dict(src["details"] or {})
            mosaics = list(details.get("mosaics", []))
            up: dict = {"source_id": src["source_id"]}
            if mosaic not in mosaics:
                mosaics.append(mosaic)
                up["n_detections"] = src["n_detections"] + 1
            old_err = src["flux_err_jy"] if src["flux_err_jy"] is not None else math.inf
            if meas["flux_err_jy"] < old_err:
                n_improved += 1
                up.update(meas, best_mosaic=mosaic)
                details.update(finder)
            up["details"] = dict(details, mosaics=mosaics)
            updates.append(up)
            continue
        name = _unique_name(source_name(meas["ra_deg"], meas["dec_deg"]), names)
        names.add(name)
        new.append(dict(meas, name=name, first_seen=mosaic, best_mosaic=mosaic, n_detections=1, is_reference=False,
                        details=dict(finder, mosaics=[mosaic])))
    db.write_sources(url, updates, new)
    n_ref = select_references(url, settings)
    return CatalogueUpdate(mosaic=mosaic, n_detections=int(keep.size), n_matched=n_matched, n_new=len(new),
                           n_improved=n_improved, n_total=len(existing) + len(new), n_references=n_ref,
                           new_names=[n["name"] for n in new])


def _unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    for suffix in "abcdefghijklmnopqrstuvwxyz":
        if name + suffix not in taken:
            return name + suffix
    raise PermanentError(f"more than 26 catalogue sources named {name}; the positions are duplicated")


def select_references(url: str, settings: SurveyConfig | None = None) -> int:
    """Re-select the flux-scale references over the whole catalogue; returns how many."""
    settings = settings if settings is not None else SurveyConfig()
    cat = db.catalogue_sources(url)
    if not cat:
        return 0
    ra = np.array([s["ra_deg"] for s in cat])
    dec = np.array([s["dec_deg"] for s in cat])
    refs = set()
    from scipy.spatial import cKDTree

    tree = cKDTree(_unit(ra, dec))
    for i, s in enumerate(cat):
        det = s["details"] or {}
        if (s["snr"] or 0) < settings.reference_min_snr or det.get("variable"):
            continue
        if det.get("finder_flags", 0) & UNCLEAN_FINDER_FLAGS:
            continue
        bmaj = det.get("beam_major_deg")
        if bmaj:
            chord = 2 * math.sin(math.radians(settings.blend_beams * bmaj) / 2)
            if len(tree.query_ball_point(_unit([ra[i]], [dec[i]])[0], chord)) > 1:
                continue
        refs.add(s["source_id"])
    db.set_references(url, refs)
    return len(refs)


def mark_variable(url: str, names: list[str], variable: bool = True, settings: SurveyConfig | None = None) -> int:
    """Mark sources as variable (or not): variable sources are never references. Returns the reference count."""
    settings = settings if settings is not None else SurveyConfig()
    found = db.catalogue_sources(url, names=names)
    missing = sorted(set(names) - {s["name"] for s in found})
    if missing:
        raise KeyError(f"unknown catalogue source(s) {', '.join(missing)}; `contimg catalogue export` lists them")
    db.write_sources(url, [{"source_id": s["source_id"], "details": dict(s["details"] or {}, variable=variable)}
                           for s in found], [])
    return select_references(url, settings)


def catalogue_table(url: str, *, reference_only: bool = False):
    """The reference catalogue as an astropy Table with units and descriptions."""
    from astropy import units as u
    from astropy.table import Table

    rows = db.catalogue_sources(url, reference_only=reference_only)
    key = {"ra": "ra_deg", "dec": "dec_deg", "ra_err": "ra_err_arcsec", "dec_err": "dec_err_arcsec",
           "flux": "flux_jy", "flux_err": "flux_err_jy"}
    t = Table()
    for name, unit, desc in EXPORT_COLUMNS:
        values = [r[key.get(name, name)] for r in rows]
        if name in ("source_id", "n_detections"):
            col = np.array(values, dtype=np.int64)
        elif name == "is_reference":
            col = np.array(values, dtype=bool)
        elif name in ("name", "first_seen", "best_mosaic"):
            col = np.array(values, dtype=str) if values else np.array([], dtype="U1")
        else:
            col = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        t[name] = col * u.Unit(unit) if unit else col
        t[name].description = desc
    t.meta.update({"catalogue": "contimg survey reference catalogue", "n_sources": len(rows),
                   "n_references": int(sum(r["is_reference"] for r in rows))})
    return t


def export(url: str, path: str | Path, fmt: str = "ecsv") -> Path:
    """Write the catalogue as ``fmt`` (``ecsv`` or ``votable``) atomically; returns the path."""
    from .sourcefind import write_catalogue

    return write_catalogue(catalogue_table(url), path, fmt)
