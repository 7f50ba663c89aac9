"""Survey science wiring: forced photometry of a block into light curves, and the ESE search over them.

- :func:`photometer_block` (called by the per-block callback once a block is
  imaged, and by ``contimg photometry`` for blocks imaged before the
  catalogue existed): forced photometry (:mod:`contimg.forced`) of every
  catalogue source on the block image, the block's relative flux scale from
  the reference sources (:mod:`contimg.fluxscale`), and both written to the
  products database in one transaction (tables ``photometry`` and
  ``flux_scales``). Without a catalogue it records the block as ``skipped``
  with the reason, and the block is not failed.
- :func:`lightcurve`, :func:`lightcurves`: light curves from the database.
- :func:`find_candidates`: the ESE detector (:mod:`contimg.ese`) over every
  catalogue source's light curve.
- :func:`refresh_references`: demote references whose light curves are not
  steady.

No Celery; the database is the only state.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import database as db
from . import fluxscale, forced
from .config import SurveyConfig
from .telescope import BLOCK_DURATION_S

NO_SCALE = 16
"""Photometry flag: the block had too few references for a flux scale (fluxes unscaled)."""
FLAG_NAMES = {**forced.FLAG_NAMES, NO_SCALE: "no_scale"}
LIGHTCURVE_EXCLUDE = forced.EDGE | forced.LOW_PB | forced.FEW_PIXELS | NO_SCALE
"""Photometry rows with any of these flags are left out of light curves (blends stay: they are fitted jointly)."""


def forced_settings(sv: SurveyConfig) -> forced.ForcedSettings:
    """The forced-photometry settings of the ``[survey]`` configuration."""
    return forced.ForcedSettings(edge_beams=sv.edge_beams, min_pb=sv.min_pb, blend_beams=sv.blend_beams)


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in sorted(FLAG_NAMES.items()) if flags & bit]


def block_mjd(header) -> float:
    """Mid-time (MJD, UTC) of a block image: MJD-OBS (else DATE-OBS) plus half a block."""
    if "MJD-OBS" in header:
        start = float(header["MJD-OBS"])
    else:
        from astropy.time import Time

        start = Time(header["DATE-OBS"], scale="utc").mjd
    return start + BLOCK_DURATION_S / 2 / 86400.0


def photometer_block(url: str, block_id: str, image_fits: str | Path, pb_fits: str | Path,
                     settings: SurveyConfig | None = None) -> dict:
    """Forced photometry and flux scale of one block, recorded in the database.

    Returns
    -------
    dict
        ``state`` (ok, no_scale or skipped), ``reason``, ``n_sources``,
        ``n_references``, ``n_rejected``, ``scale``, ``scale_err``, ``seconds``.

    Raises
    ------
    PermanentError
        The block's image or pb FITS is missing or lacks the beam.
    """
    settings = settings if settings is not None else SurveyConfig()
    import time

    t0 = time.perf_counter()
    cat = db.catalogue_sources(url)
    if not cat:
        reason = "no reference catalogue in the products database; build one with `contimg catalogue build MOSAIC`"
        db.record_flux_scale(url, block_id, state=db.PHOT_SKIPPED, reason=reason, image_path=str(image_fits),
                             n_sources=0, n_references=0, n_rejected=0, scale=1.0, scale_err=None, details={})
        return {"block_id": block_id, "state": db.PHOT_SKIPPED, "reason": reason, "n_sources": 0}
    blk = forced.read_block_image(image_fits, pb_fits)
    mjd = block_mjd(blk.header)
    ra = np.array([s["ra_deg"] for s in cat])
    dec = np.array([s["dec_deg"] for s in cat])
    res = forced.measure(blk, ra, dec, forced_settings(settings))

    cat_flux = np.array([s["flux_jy"] for s in cat], float)
    cat_err = np.array([np.nan if s["flux_err_jy"] is None else s["flux_err_jy"] for s in cat], float)
    is_ref = np.array([bool(s["is_reference"]) for s in cat])
    refs = np.flatnonzero(is_ref & res.inside & (res.flags == 0) & (res.snr >= settings.reference_min_block_snr))
    fs = fluxscale.robust_scale(res.flux[refs], res.flux_err[refs], cat_flux[refs], cat_err[refs],
                                clip_sigma=settings.reference_clip_sigma, min_refs=settings.min_references)
    flux, flux_err = fluxscale.apply_scale(res.flux, res.flux_err, fs)
    flags = res.flags | (0 if fs.determined else NO_SCALE)

    rows = []
    for i in np.flatnonzero(res.inside):
        rows.append(dict(source_id=cat[i]["source_id"], mjd=mjd, flux_jy=_f(flux[i]), flux_err_jy=_f(flux_err[i]),
                         raw_flux_jy=_f(res.flux[i]), raw_flux_err_jy=_f(res.flux_err[i]),
                         scale=fs.scale, pb=_f(res.pb[i]), snr=_f(res.snr[i]), local_rms_jy=_f(res.local_rms[i]),
                         flags=int(flags[i])))
    if fs.determined:
        state, reason = db.PHOT_OK, None
    else:
        state = db.PHOT_NO_SCALE
        reason = (f"only {fs.n_used} usable reference sources in the block (survey.min_references = "
                  f"{settings.min_references}); fluxes are unscaled and flagged no_scale")
    rejected = [{"name": cat[refs[j]]["name"], "ratio": _f(res.flux[refs[j]] / cat_flux[refs[j]]),
                 "snr": _f(res.snr[refs[j]])} for j in fs.rejected]
    details = {"rejected": rejected, "dispersion": _f(fs.dispersion), "n_used": fs.n_used,
               "beam_deg": list(blk.beam_deg), "settings": {k: getattr(settings, k) for k in (
                   "reference_min_block_snr", "reference_clip_sigma", "min_references", "min_pb", "edge_beams",
                   "blend_beams")}}
    db.record_block_photometry(url, block_id, rows, state=state, reason=reason, mjd=mjd, image_path=str(image_fits),
                               n_sources=len(rows), n_references=fs.n_references, n_rejected=fs.n_rejected,
                               scale=fs.scale, scale_err=_f(fs.scale_err), method=fs.method, details=details)
    return {"block_id": block_id, "state": state, "reason": reason, "n_sources": len(rows),
            "n_references": fs.n_references, "n_rejected": fs.n_rejected, "scale": fs.scale,
            "scale_err": _f(fs.scale_err), "seconds": round(time.perf_counter() - t0, 3)}


def _f(v) -> float | None:
    """A float for the database; None for NaN."""
    v = float(v)
    return v if math.isfinite(v) else None


def photometer_blocks(url: str, products_root: str | Path, block_ids: list[str] | None = None,
                      settings: SurveyConfig | None = None) -> list[dict]:
    """:func:`photometer_block` of every done block with image and pb products (or of ``block_ids``)."""
    settings = settings if settings is not None else SurveyConfig()
    from .products import block_products

    out = []
    for rec in db.blocks(url, block_ids):
        if rec["state"] != db.DONE:
            continue
        prods = block_products(products_root, rec["block_id"])
        image = rec["products"].get("image_fits") or str(prods.fits("image"))
        pb = rec["products"].get("pb_fits") or str(prods.fits("pb"))
        if not Path(image).is_file() or not Path(pb).is_file():
            out.append({"block_id": rec["block_id"], "state": db.PHOT_FAILED,
                        "reason": f"no image or pb FITS ({image}); image the block first"})
            continue
        out.append(photometer_block(url, rec["block_id"], image, pb, settings))
    return out


# -- light curves ------------------------------------------------------------------

LIGHTCURVE_COLUMNS = [
    ("block_id", None, "block (image) the flux was measured on"),
    ("mjd", "d", "mid-time of the block (UTC)"),
    ("flux", "Jy", "flux density: primary-beam corrected, divided by the block's flux scale"),
    ("flux_err", "Jy", "1-sigma error (local noise, scale error)"),
    ("raw_flux", "Jy", "primary-beam corrected flux before the flux scale"),
    ("raw_flux_err", "Jy", "its error"),
    ("scale", None, "the block's flux scale (measured / catalogue)"),
    ("pb", None, "primary-beam response at the source"),
    ("snr", None, "forced signal-to-noise ratio"),
    ("flags", None, "bits: 1 edge, 2 low pb, 4 blend, 8 few pixels, 16 no flux scale"),
    ("used", None, "in the light curve used for variability and ESE search (no excluding flag)"),
]


def lightcurve(url: str, name: str):
    """The light curve of one catalogue source as an astropy Table (every epoch, flagged ones too).

    Raises
    ------
    KeyError
        ``name`` is not in the catalogue (the message names it).
    """
    from astropy import units as u
    from astropy.table import Table

    found = db.catalogue_sources(url, names=[name])
    if not found:
        n = len(db.catalogue_sources(url))
        hint = ("`contimg catalogue export` lists the sources" if n else
                "the catalogue is empty; build it with `contimg catalogue build MOSAIC`")
        raise KeyError(f"unknown source {name!r} in {url}; {hint}")
    src = found[0]
    rows = db.photometry_rows(url, [src["source_id"]])
    key = {"flux": "flux_jy", "flux_err": "flux_err_jy", "raw_flux": "raw_flux_jy", "raw_flux_err": "raw_flux_err_jy"}
    t = Table()
    for col, unit, desc in LIGHTCURVE_COLUMNS:
        if col == "used":
            values = np.array([_usable(r) for r in rows], dtype=bool)
        elif col == "block_id":
            values = np.array([r["block_id"] for r in rows], dtype=str) if rows else np.array([], dtype="U1")
        elif col == "flags":
            values = np.array([r["flags"] for r in rows], dtype=np.int64)
        else:
            values = np.array([np.nan if r[key.get(col, col)] is None else r[key.get(col, col)] for r in rows],
                              dtype=np.float64)
        t[col] = values * u.Unit(unit) if unit else values
        t[col].description = desc
    t.meta.update({"source": src["name"], "source_id": src["source_id"], "ra_deg": src["ra_deg"],
                   "dec_deg": src["dec_deg"], "catalogue_flux_jy": src["flux_jy"],
                   "is_reference": bool(src["is_reference"])})
    return t


def _usable(r: dict) -> bool:
    return (not r["flags"] & LIGHTCURVE_EXCLUDE and r["flux_jy"] is not None and r["flux_err_jy"] is not None
            and r["flux_err_jy"] > 0)


def lightcurves(url: str):
    """Every catalogue source's usable epochs as :class:`contimg.ese.LightCurve` (time = MJD), by source id."""
    from .ese import LightCurve

    out, cur, name = [], [], None
    for r in db.photometry_rows(url) + [None]:
        if r is None or (name is not None and r["name"] != name):
            if cur:
                out.append(LightCurve(name, np.array([c["mjd"] for c in cur]), np.array([c["flux_jy"] for c in cur]),
                                      np.array([c["flux_err_jy"] for c in cur])))
            cur = []
        if r is None:
            break
        name = r["name"]
        if _usable(r):
            cur.append(r)
    return out


def find_candidates(url: str, fpr: float = SurveyConfig().ese_fpr):
    """ESE candidates among the catalogue's light curves, most significant first.

    Returns
    -------
    candidates : list of contimg.ese.Candidate
    curves : dict
        source name -> its LightCurve (for plots).
    n_sources : int
        Light curves scanned.
    """
    from . import ese

    curves = lightcurves(url)
    if not curves:
        return [], {}, 0
    t, f, e = ese.pack_lightcurves(curves)
    cands = ese.detect(f, e, t, [c.source for c in curves], fpr=fpr)
    return cands, {c.source: c for c in curves}, len(curves)


def plot_lightcurve(table, png_path: str | Path, candidate=None) -> Path:
    """Plot a :func:`lightcurve` table: used epochs black, flagged ones grey, a candidate's dip shaded."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    used = np.asarray(table["used"], bool)
    t = np.asarray(table["mjd"], float)
    f = np.asarray(table["flux"], float) * 1e3
    e = np.asarray(table["flux_err"], float) * 1e3
    ax.errorbar(t[used], f[used], yerr=e[used], fmt="o", ms=3, lw=0.8, color="k", label="flux")
    if (~used).any():
        ax.errorbar(t[~used], f[~used], yerr=e[~used], fmt="x", ms=4, lw=0.6, color="0.6", label="flagged")
    cat = table.meta.get("catalogue_flux_jy")
    if cat:
        ax.axhline(cat * 1e3, color="tab:blue", lw=0.8, ls="--", label="catalogue")
    title = str(table.meta.get("source", ""))
    if candidate is not None:
        ax.axvspan(candidate.start_time, candidate.end_time, color="tab:orange", alpha=0.25,
                   label=f"dip {100 * candidate.depth:.0f}%")
        title += f": ESE candidate z={candidate.score:.1f}, FAP {candidate.fap:.1e}"
    ax.set_xlabel("MJD")
    ax.set_ylabel("flux density (mJy)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(out)
    return out


def refresh_references(url: str, settings: SurveyConfig | None = None, *, max_chi2_p: float = 1e-4,
                       min_epochs: int = 5) -> list[str]:
    """Mark references whose light curve is not steady (chi-square p below ``max_chi2_p``) as variable.

    Returns the names demoted. Rerun :func:`photometer_blocks` afterwards so
    that every block's scale uses the new reference set.
    """
    settings = settings if settings is not None else SurveyConfig()
    from . import catalogue
    from .variability import variability_stats

    refs = {s["name"] for s in db.catalogue_sources(url, reference_only=True)}
    curves = [c for c in lightcurves(url) if c.source in refs and c.flux.size >= min_epochs]
    if not curves:
        return []
    from .ese import pack_lightcurves

    _, f, e = pack_lightcurves(curves)
    st = variability_stats(f, e)
    bad = [c.source for c, p in zip(curves, st.chi2_p) if p < max_chi2_p]
    if bad:
        catalogue.mark_variable(url, bad, True, settings)
    return bad


def photometer_after_imaging(url: str, block_id: str, image_fits: str | None, pb_fits: str | None,
                             settings: SurveyConfig | None = None) -> dict:
    """:func:`photometer_block` for the per-block callback: never fails the block.

    No catalogue: recorded as ``skipped``. Any error: logged and recorded as
    ``failed`` with the reason in ``flux_scales`` (the block image stands;
    ``contimg photometry --block ID`` measures it again).
    """
    settings = settings if settings is not None else SurveyConfig()
    import logging

    try:
        if not image_fits or not pb_fits:
            raise ValueError("the imaging step registered no image or pb FITS")
        return photometer_block(url, block_id, image_fits, pb_fits, settings)
    except Exception as e:  # photometry is a follow-up of the image: record it, keep the block done
        logging.getLogger(__name__).exception("block %s: forced photometry failed", block_id)
        reason = (f"forced photometry failed: {type(e).__name__}: {e}; "
                  f"rerun it with `contimg photometry --block {block_id}`")
        try:
            db.record_flux_scale(url, block_id, state=db.PHOT_FAILED, reason=reason, image_path=str(image_fits))
        except Exception:  # the database itself is down: the log has it
            logging.getLogger(__name__).exception("block %s: could not record the photometry failure", block_id)
        return {"block_id": block_id, "state": db.PHOT_FAILED, "reason": reason}
