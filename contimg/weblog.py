"""Weblogs: one self-contained HTML page per run and per night.

A weblog opens from disk with nothing beside it: every figure is a PNG
embedded as a ``data:`` URI and the style is inline, so it can be mailed,
archived or copied without breaking. It shows, from the products database and
the products themselves:

- per block: state, reason, subbands converted, the image (pb-corrected) as a
  thumbnail with its beam and rms, the time per stage;
- flag fractions per antenna and subband (after flagging);
- the bandpass (amplitude and phase per antenna, across the band) of the
  calibrator blocks of the run, or of the caltables its blocks applied;
- mosaics of the night (their PNG quicklooks);
- light curves of the survey's ESE candidates among the run's sources;
- the QA verdict and report, when an analyst gave one.

Figures are rendered with matplotlib (Agg); FITS through astropy; caltables
through python-casacore (no CASA start-up). Pages are written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import database as db
from . import products
from .config import Config

log = logging.getLogger(__name__)

STAGES = ("convert_s", "flag_s", "calibrate_s", "concat_s", "image_s", "photometry_s")


@dataclass
class Figure:
    """One embedded figure."""

    title: str
    png: bytes
    caption: str = ""

    def html(self) -> str:
        b64 = base64.b64encode(self.png).decode()
        cap = f"<figcaption>{html.escape(self.caption)}</figcaption>" if self.caption else ""
        return (f'<figure><img alt="{html.escape(self.title)}" src="data:image/png;base64,{b64}">'
                f"<figcaption><b>{html.escape(self.title)}</b></figcaption>{cap}</figure>")


@dataclass
class Section:
    title: str
    body: str = ""
    figures: list[Figure] = field(default_factory=list)

    def html(self) -> str:
        figs = "".join(f.html() for f in self.figures)
        return f"<section><h2>{html.escape(self.title)}</h2>{self.body}<div class=figs>{figs}</div></section>"


# -- figures ----------------------------------------------------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(w, h))


def image_thumbnail(fits_path: str | Path, title: str = "") -> bytes:
    """A block or mosaic image with RA/Dec axes and a colour bar (mJy/beam)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(fits_path) as hdul:
        data = np.asarray(hdul[0].data, dtype=float)
        wcs = WCS(hdul[0].header).celestial
    while data.ndim > 2:
        data = data[0]
    finite = np.isfinite(data)
    lo, hi = (np.percentile(data[finite], [1.0, 99.7]) if finite.any() else (0.0, 1.0))
    fig = _figure(5.2, 4.6)
    ax = fig.add_subplot(projection=wcs)
    im = ax.imshow(1e3 * data, origin="lower", cmap="inferno", vmin=1e3 * lo, vmax=1e3 * hi)
    ax.coords.grid(color="white", alpha=0.3, ls=":")
    ax.set_xlabel("RA")
    ax.set_ylabel("Dec")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mJy/beam", shrink=0.85)
    return _png(fig)


def flag_heatmap(details: dict[int, dict]) -> bytes | None:
    """Flag fraction after flagging, antennas x subbands, from the subbands' recorded details."""
    per: dict[int, dict[str, float]] = {}
    for sb, d in details.items():
        flags = d.get("flags") or {}
        if flags.get("per_antenna_after"):
            per[sb] = flags["per_antenna_after"]
    if not per:
        return None
    ants = sorted({a for d in per.values() for a in d})
    sbs = sorted(per)
    grid = np.full((len(ants), len(sbs)), np.nan)
    for j, sb in enumerate(sbs):
        for i, a in enumerate(ants):
            grid[i, j] = per[sb].get(a, np.nan)
    fig = _figure(6.0, max(2.5, 0.09 * len(ants) + 1.2))
    ax = fig.add_subplot()
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(len(sbs)), [f"{s:02d}" for s in sbs], fontsize=7)
    step = max(1, len(ants) // 25)
    ax.set_yticks(range(0, len(ants), step), ants[::step], fontsize=6)
    ax.set_xlabel("subband")
    ax.set_ylabel("antenna")
    fig.colorbar(im, ax=ax, label="flagged fraction")
    fig.tight_layout()
    return _png(fig)


def timing_bars(blocks: list[dict]) -> bytes | None:
    """Seconds per stage and block (stacked; convert, flag and calibrate summed over subbands)."""
    rows = [(b["block_id"][11:], b.get("timings") or {}) for b in blocks]
    stages = [s for s in STAGES if any(t.get(s) for _, t in rows)]
    if not stages:
        return None
    fig = _figure(6.5, 0.35 * len(rows) + 1.4)
    ax = fig.add_subplot()
    left = np.zeros(len(rows))
    for s in stages:
        v = np.array([t.get(s, 0.0) or 0.0 for _, t in rows])
        ax.barh(range(len(rows)), v, left=left, label=s.removesuffix("_s"))
        left += v
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (subband stages summed over subbands)")
    ax.legend(fontsize=7, ncol=len(stages), loc="lower right")
    fig.tight_layout()
    return _png(fig)


def read_bandpass(table: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(frequency Hz [nchan], gains [nant, nchan, npol] complex, flags, antenna names) of a bandpass table."""
    from casacore.tables import table as open_table

    with open_table(str(table), ack=False) as t:
        cparam = t.getcol("CPARAM")
        flag = t.getcol("FLAG")
        ant = t.getcol("ANTENNA1")
    with open_table(f"{table}/SPECTRAL_WINDOW", ack=False) as t:
        freq = t.getcol("CHAN_FREQ")[0]
    with open_table(f"{table}/ANTENNA", ack=False) as t:
        names = list(t.getcol("NAME"))
    order = np.argsort(ant, kind="stable")
    return freq, cparam[order], flag[order], [names[a] for a in ant[order]]


def bandpass_plot(tables: list[str | Path], title: str) -> bytes | None:
    """Amplitude and phase of the bandpass across the subbands' tables, one line per antenna."""
    curves = []
    for tab in tables:
        try:
            curves.append(read_bandpass(tab))
        except Exception as e:  # noqa: BLE001 -- a missing or unreadable table is shown as absent, not fatal
            log.warning("weblog: cannot read bandpass %s: %s", tab, e)
    if not curves:
        return None
    fig = _figure(7.0, 4.8)
    ax_a, ax_p = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
    for freq, g, f, names in curves:
        gg = np.where(f, np.nan, g)[..., 0]  # first polarization
        for i in range(gg.shape[0]):
            ax_a.plot(freq / 1e6, np.abs(gg[i]), lw=0.4, alpha=0.5)
            ax_p.plot(freq / 1e6, np.degrees(np.angle(gg[i])), lw=0.4, alpha=0.5)
    ax_a.set_ylabel("amplitude")
    ax_p.set_ylabel("phase (deg)")
    ax_p.set_xlabel("frequency (MHz)")
    ax_a.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def png_file(path: str | Path) -> bytes:
    return Path(path).read_bytes()


# -- page -------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}.done{color:#1a7f37}.failed{color:#c62828}.pass{color:#1a7f37}.fail{color:#c62828}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;max-width:560px}figure img{max-width:100%}
figcaption{font-size:.8em;color:#555}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;font-size:.85em}
.meta{color:#555;font-size:.85em}
"""

# Counts the images that decoded, for tests and for anyone opening the page.
SCRIPT = """<script>
window.addEventListener('load',()=>{const imgs=[...document.images];
document.body.dataset.images=imgs.length;
document.body.dataset.imagesShown=imgs.filter(i=>i.complete&&i.naturalWidth>0).length;});
</script>"""


def _table(rows: list[list[Any]], header: list[str], classes: list[str | None] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r)
                    + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _page(title: str, meta: str, sections: list[Section]) -> str:
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=meta>{meta}</p>"
            + "".join(s.html() for s in sections) + SCRIPT + "</body></html>")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = products.temporary_name(path)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# -- sections ---------------------------------------------------------------------


def blocks_section(blocks: list[dict]) -> Section:
    rows, classes = [], []
    for b in blocks:
        t = b.get("timings") or {}
        img = b.get("image") or {}
        rows.append([b["block_id"], b["state"], f"{b['n_subbands_ok']}/16", b.get("imaging_node") or "-",
                     b.get("attempts"), f"{1e3 * img['rms_jy']:.2f}" if img.get("rms_jy") else "",
                     f"{t.get('block_wall_s', ''):}", b.get("reason") or ""])
        classes.append(b["state"] if b["state"] in ("done", "failed") else None)
    body = _table(rows, ["block", "state", "subbands", "imaging node", "attempts", "rms mJy/beam", "wall s",
                         "reason"], classes)
    figs = []
    for b in blocks:
        prods = b.get("products") or {}
        path = prods.get("image_pbcor_fits") or prods.get("pbcor_fits") or prods.get("image_fits")
        if path and Path(path).is_file():
            img = b.get("image") or {}
            cap = (f"beam {img.get('beam_major_arcsec', 0):.0f}x{img.get('beam_minor_arcsec', 0):.0f} arcsec, "
                   f"rms {1e3 * img.get('rms_jy', math.nan):.2f} mJy/beam, peak {img.get('peak_jy', math.nan):.3f} Jy/beam"
                   if img else "")
            try:
                figs.append(Figure(f"{b['block_id']} ({Path(path).name})", image_thumbnail(path, b["block_id"]), cap))
            except Exception as e:  # noqa: BLE001 -- an unreadable product must not stop the page
                log.warning("weblog: cannot render %s: %s", path, e)
    return Section("Blocks", body, figs)


def flags_section(cfg: Config, blocks: list[dict]) -> Section | None:
    details = db.subband_details(cfg.database_url, [b["block_id"] for b in blocks])
    figs = []
    for b in blocks:
        png = flag_heatmap(details.get(b["block_id"], {}))
        if png:
            figs.append(Figure(f"flags {b['block_id']}", png, "fraction of each antenna's cross-correlations "
                                                           "flagged, per subband"))
    return Section("Flag fractions per antenna and subband", "", figs) if figs else None


def bandpass_section(cfg: Config, block_ids: list[str]) -> Section | None:
    url = cfg.database_url
    sets = db.caltables_for_blocks(url, block_ids)  # the run's own calibrator blocks
    if not sets:  # else the calibrator blocks whose caltables the run's blocks applied
        used = {cs["block_id"] for per_sb in db.subband_details(url, block_ids).values() for d in per_sb.values()
                for cs in ((d.get("calibration") or {}).get("selection") or {}).get("sets", [])}
        sets = db.caltables_for_blocks(url, sorted(used))
    figs = []
    for s in sets:
        png = bandpass_plot(s["bandpass"], f"bandpass from {s['block_id']} ({s['calibrator']})")
        if png:
            figs.append(Figure(f"bandpass {s['block_id']}", png, f"solved on {s['calibrator']}: amplitude and "
                                                                 "phase per antenna, first polarization"))
    return Section("Bandpass", "", figs) if figs else None


def timings_section(blocks: list[dict]) -> Section | None:
    png = timing_bars(blocks)
    if png is None:
        return None
    return Section("Time per stage", "", [Figure("seconds per stage and block", png)])


def ese_section(cfg: Config, block_ids: list[str], max_plots: int = 10) -> Section | None:
    """Light curves of the survey's ESE candidates among the sources measured in these blocks."""
    from . import survey

    url = cfg.database_url
    try:
        cands, _, n = survey.find_candidates(url, fpr=cfg.survey.ese_fpr)
    except Exception as e:  # noqa: BLE001 -- no catalogue or photometry yet: the section is left out
        log.info("weblog: no ESE search (%s)", e)
        return None
    measured = set(db.photometry_source_names(url, block_ids))
    cands = [c for c in cands if c.source in measured]
    if not cands:
        return Section("ESE candidates", f"<p>none among {n} light curves at FAP {cfg.survey.ese_fpr:g}</p>")
    rows = [[c.source, f"{c.score:.1f}", f"{100 * c.depth:.0f} %", f"{c.duration:.1f}", c.reason] for c in cands]
    figs = []
    for c in cands[:max_plots]:
        table = survey.lightcurve(url, c.source)
        path = survey.plot_lightcurve(table, products.lightcurve_png(cfg.paths.products_root, c.source), candidate=c)
        figs.append(Figure(f"light curve {c.source}", path.read_bytes()))
    return Section("ESE candidates", _table(rows, ["source", "score", "depth", "duration (d)", "reason"]), figs)


def qa_section(run: dict) -> Section | None:
    qa = run.get("qa")
    if not qa:
        return Section("QA", "<p>no verdict yet (<code>contimg qa RUN --pass|--fail|--null</code>)</p>")
    body = (f"<p class={html.escape(qa['state'])}>verdict: <b>{html.escape(qa['state'])}</b> by "
            f"{html.escape(qa.get('analyst') or '?')} on {html.escape(qa.get('at') or '?')}</p>")
    if qa.get("report"):
        body += f"<pre>{html.escape(qa['report'])}</pre>"
    return Section("QA", body)


def mosaics_section(cfg: Config, date: str) -> Section | None:
    root = Path(cfg.paths.products_root) / "mosaics" / date
    pngs = sorted(root.glob("*/*.png")) if root.is_dir() else []
    if not pngs:
        return None
    return Section("Mosaics", "", [Figure(p.parent.name, png_file(p)) for p in pngs])


# -- pages ------------------------------------------------------------------------


def render_run(cfg: Config, run_id: str) -> Path:
    """Write the run's weblog (``products.run_weblog``); returns its path.

    Raises
    ------
    KeyError
        ``run_id`` is not a recorded run.
    """
    url = cfg.database_url
    found = db.runs(url, products.check_run_id(run_id))
    if not found:
        raise KeyError(f"unknown run id {run_id}; `contimg runs` lists the runs")
    run = found[0]
    run["qa"] = db.qa(url, run_id)
    blocks = db.blocks(url, run["block_ids"])
    meta = (f"run <b>{html.escape(run_id)}</b> ({html.escape(run['kind'])}) submitted by "
            f"{html.escape(run['submitted_by'] or '?')} at {html.escape(run['submitted_at'] or '?')}; "
            f"blocks {html.escape(str(run['states']))}")
    sections = [blocks_section(blocks), timings_section(blocks), flags_section(cfg, blocks),
                bandpass_section(cfg, run["block_ids"]), ese_section(cfg, run["block_ids"]), qa_section(run)]
    dates = sorted({b[:10] for b in run["block_ids"]})
    sections += [mosaics_section(cfg, d) for d in dates]
    cfg_text = db.run_config(url, run_id)
    if cfg_text:
        sections.append(Section("Effective configuration", f"<pre>{html.escape(cfg_text)}</pre>"))
    page = _page(f"contimg run {run_id}", meta, [s for s in sections if s is not None])
    return _write(products.run_weblog(cfg.paths.products_root, run_id), page)


def render_finished_runs(cfg: Config) -> list[Path]:
    """Write the weblog of every run whose blocks all ended and that has none yet (and its night's).

    The weblog is registered as the run's product (block ``""``, kind ``weblog``) so
    that each is written once; ``contimg weblog RUN`` rewrites it on demand.
    """
    url = cfg.database_url
    out = []
    for run in db.runs(url, without_product="weblog"):
        states = set(run["states"])
        if not run["block_ids"] or not states <= {db.DONE, db.FAILED}:
            continue
        page = render_run(cfg, run["run_id"])
        db.record_run_product(url, run["run_id"], "", "weblog", page)
        out.append(page)
        for date in sorted({b[:10] for b in run["block_ids"]}):
            out.append(render_night(cfg, date))
    return out


def render_night(cfg: Config, date: str) -> Path:
    """Write the night's weblog (every block of the UTC date, its runs, mosaics); returns its path."""
    url = cfg.database_url
    blocks = db.blocks(url, date=date)
    if not blocks:
        raise KeyError(f"no blocks recorded for {date}; `contimg status` lists the known blocks")
    runs = [r for r in db.runs(url) if any(b.startswith(date) for b in r["block_ids"])]
    for r in runs:
        r["qa"] = db.qa(url, r["run_id"])
    rows = [[r["run_id"], r["kind"], r["submitted_at"], str(r["states"]),
             (r.get("qa") or {}).get("state", "")] for r in runs]
    links = "".join(f'<li><a href="../../runs/{html.escape(r["run_id"])}/index.html">{html.escape(r["run_id"])}</a></li>'
                    for r in runs)
    runs_section = Section("Runs", _table(rows, ["run", "kind", "submitted", "blocks", "QA"]) + f"<ul>{links}</ul>")
    ids = [b["block_id"] for b in blocks]
    sections = [runs_section, blocks_section(blocks), timings_section(blocks), bandpass_section(cfg, ids),
                mosaics_section(cfg, date), ese_section(cfg, ids)]
    meta = f"night {html.escape(date)}: {len(blocks)} blocks, {len(runs)} runs"
    page = _page(f"contimg night {date}", meta, [s for s in sections if s is not None])
    return _write(products.night_weblog(cfg.paths.products_root, date), page)
