"""Concatenate the subbands of a block and make its Stokes I image with tclean.

``imaging.backend = "wsclean"`` makes the same products from the subband MSs
directly with WSClean (:mod:`contimg.wsclean`, no concatenation); the rules
below (cell, size, primary beam, headers, products) are shared by both.

Choices (see ``docs/imaging.md``):

- **Concatenation**: ``casatasks.concat`` into one real MS, inputs sorted by
  frequency so the spectral windows ascend; the inputs must share one phase
  centre (they do when converted with one ``block_mid_jd``), so the result has
  one field.
- **Cell** (``cell_arcsec = 0``): a fifth of lambda_min / B_max, with B_max the
  longest projected baseline in the MS and lambda_min at its highest
  frequency: five pixels across the finest fringe, at least three across the
  synthesized beam for any weighting.
- **Image size** (``imsize = 0``): the diameter at which the Airy power beam
  falls to ``pb_limit`` at the reference frequency (the band centre, where
  tclean evaluates the mfs primary beam and applies ``pblimit``), plus 5 %,
  capped at ``max_imsize`` and rounded to an even 5-smooth size.
- **Channel averaging** (``max_bandwidth_smearing``): channels are averaged
  (``casatasks.split`` width) before imaging only by the largest factor that
  keeps the bandwidth-smearing peak loss of the longest baseline at the image
  edge at or below the limit (:func:`channel_average_width`).
- **Primary beam**: the ``pb`` product is the Airy power beam averaged over the
  block's drift (:mod:`contimg.primary_beam`), and ``image.pbcor`` = image / pb,
  masked where pb < ``pb_limit``. tclean still gets an Airy VP table for the
  DSA-110 (it needs a beam for the telescope and masks its outputs where that
  static beam is below ``pb_limit``), but its own ``.pb``/``.image.pbcor``,
  centred on the phase centre, are not kept.
- **Products kept**: FITS only (image, image.pbcor, pb, residual). tclean
  writes into a private working directory inside ``products.directory``
  (``.{block_id}.partial/``), removed before each run (tclean would otherwise
  resume from stale images) and after export: the CASA images are hundreds of
  MB per block at full size.
- **Measurements** on the flat-noise image: peak, and a MAD-based rms outside
  ten beams of the brightest pixel.

CASA is not thread-safe: call these functions from one thread per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import casa_env, primary_beam, telescope
from .config import ImagingConfig
from .errors import PermanentError, TransientError
from .fitsimage import sky_plane
from .products import BlockProducts, is_disk_error, remove_path, replace_directory, temporary_name

log = logging.getLogger(__name__)

FITS_KINDS = ("image", "image.pbcor", "pb", "residual")
"""FITS products of a block image, by the name they get in ``BlockProducts.fits``."""
CASA_EXPORTED_KINDS = ("image", "residual")
"""Exported from tclean's images; pb and image.pbcor are computed (:func:`write_primary_beam_products`)."""

CELL_FRACTION = 5.0
"""Pixels across lambda_min / B_max."""
IMSIZE_MARGIN = 1.05
"""Headroom on the primary-beam diameter."""
MIN_IMSIZE = 64
RMS_EXCLUSION_BEAMS = 10.0
"""Radius (in restoring-beam major axes) around the brightest pixel left out of the rms."""
MAD_TO_SIGMA = 1.4826


@dataclass
class ImageResult:
    """What :func:`image_block` made and measured; ``as_dict()`` is JSON-friendly."""

    block_id: str
    ms_path: str
    """The one MS imaged (tclean: the concatenated block MS); empty when several were (wsclean; see ``ms_paths``)."""
    fits: dict[str, str]
    """FITS path per kind: image, image.pbcor, pb, residual."""
    cell_arcsec: float
    imsize: int
    reffreq_hz: float
    phase_center_ra_deg: float
    phase_center_dec_deg: float
    beam_major_arcsec: float
    beam_minor_arcsec: float
    beam_pa_deg: float
    rms_jy: float
    """Robust (MAD) rms of the flat-noise image away from the brightest source, Jy/beam."""
    peak_jy: float
    """Brightest pixel of the flat-noise image, Jy/beam."""
    peak_pbcor_jy: float
    """The primary-beam corrected image at that pixel, Jy/beam."""
    peak_ra_deg: float
    peak_dec_deg: float
    iterations: int
    stop_reason: str
    seconds: dict[str, float]
    """Wall time per step (vp, tclean, export, measure) and the total."""

    primary_beam: str = "drift"
    """How the pb product was made: drift (averaged over the block) or tracking."""
    channel_average: int = 1
    """Channels averaged into one before imaging (1: none)."""
    bandwidth_hz: float = 0.0
    """Total bandwidth imaged, Hz."""
    backend: str = "tclean"
    """The imager that made the image: tclean or wsclean."""
    ms_paths: list[str] = dataclasses.field(default_factory=list)
    """Every MS imaged: the concatenated block MS (tclean) or the subband MSs (wsclean)."""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# concatenation
# ---------------------------------------------------------------------------


def concat_subbands(ms_paths: list[str | os.PathLike], out_ms: str | os.PathLike) -> Path:
    """Concatenate the subband MSs of one block into one MS, atomically.

    Parameters
    ----------
    ms_paths : list of path
        Subband MSs, in any order; they must share one phase centre.
    out_ms : path
        The block MS; replaced only once the new one is complete.

    Returns
    -------
    Path
        ``out_ms``.

    Raises
    ------
    PermanentError
        No input, a missing input, or inputs with different phase centres.
    TransientError
        Lack of space or permission while writing.
    """
    out = Path(out_ms)
    paths = [Path(p) for p in ms_paths]
    if not paths:
        raise PermanentError(f"no subband MS to concatenate into {out}; convert the block's subbands first")
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise PermanentError(f"subband MS {', '.join(missing)} missing; convert those subbands again")
    ordered = sorted(paths, key=_min_frequency)
    _require_one_phase_center(ordered, f"cannot concatenate into {out}")

    tmp = temporary_name(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_path(tmp)  # concat appends to an existing concatvis
        cta = casa_env.casatasks()
        cta.concat(
            vis=[str(p) for p in ordered],
            concatvis=str(tmp),
            dirtol="1arcsec",
            respectname=False,
            timesort=False,
            copypointing=False,
        )
        if not tmp.is_dir():
            raise PermanentError(f"concat made no MS for {out}; see the CASA log {_casa_log()}")
        _require_fields(tmp, out, expected=1)
        replace_directory(tmp, out)
    except (OSError, RuntimeError) as e:
        remove_path(tmp)
        if is_disk_error(e):
            raise TransientError(f"concatenating into {out} failed ({e}); free space in {out.parent}") from e
        raise
    except BaseException:
        remove_path(tmp)
        raise
    return out


def _min_frequency(ms: Path) -> float:
    tb = casa_env.casatools().table()
    tb.open(str(ms / "SPECTRAL_WINDOW"))
    try:
        return float(np.min(tb.getcol("CHAN_FREQ")))
    finally:
        tb.close()


def _phase_dirs(ms: Path) -> np.ndarray:
    tb = casa_env.casatools().table()
    tb.open(str(ms / "FIELD"))
    try:
        return np.asarray(tb.getcol("PHASE_DIR"))[:, 0, :].T  # (nfield, 2) radians
    finally:
        tb.close()


def _require_one_phase_center(paths: list[Path], what: str) -> None:
    """All inputs must have one field at the same position (1 arcsec); ``what`` starts the error."""
    dirs = {p: _phase_dirs(p) for p in paths}
    ref = dirs[paths[0]][0]
    bad = []
    for p, d in dirs.items():
        sep = _separation_rad(d[:, 0], d[:, 1], ref[0], ref[1])
        if len(d) != 1 or np.any(sep > math.radians(1 / 3600)):
            bad.append(p.name)
    if bad:
        raise PermanentError(
            f"{what}: {', '.join(bad)} have a phase centre other than "
            f"{paths[0].name}'s; convert all subbands of the block with the same block_mid_jd"
        )


def _require_fields(ms: Path, out: Path, *, expected: int) -> None:
    n = len(_phase_dirs(ms))
    if n != expected:
        raise PermanentError(f"concatenation for {out} gave {n} fields instead of {expected}")


def _separation_rad(ra, dec, ra0, dec0):
    c = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
    return np.arccos(np.clip(c, -1.0, 1.0))


# ---------------------------------------------------------------------------
# image geometry (pure)
# ---------------------------------------------------------------------------


def cell_from_baseline(b_max_m: float, f_max_hz: float, fraction: float = CELL_FRACTION) -> float:
    """Cell size in arcsec: lambda_min / B_max / ``fraction``, rounded down to two digits."""
    if b_max_m <= 0 or f_max_hz <= 0:
        raise ValueError(f"need a positive longest baseline and frequency, got {b_max_m} m, {f_max_hz} Hz")
    cell = math.degrees(telescope.C_M_S / f_max_hz / b_max_m) * 3600 / fraction
    digits = 1 - int(math.floor(math.log10(cell)))
    return math.floor(cell * 10**digits) / 10**digits


def pb_radius_rad(level: float, freq_hz: float) -> float:
    """Angle at which the Airy power beam falls to ``level`` (inside the first null)."""
    from scipy.optimize import brentq

    if not 0 < level < 1:
        raise ValueError(f"primary-beam level {level} must be between 0 and 1")
    first_null = 1.2197 * telescope.C_M_S / freq_hz / telescope.DISH_DIAMETER_M
    return brentq(lambda t: float(telescope.airy_power_beam(np.array([t]), freq_hz)[0]) - level, 0.0, first_null)


def good_fft_size(n: int) -> int:
    """Smallest even 5-smooth integer (2^a 3^b 5^c) >= n."""
    m = max(2, int(math.ceil(n)))
    while True:
        if m % 2 == 0 and _is_5_smooth(m):
            return m
        m += 1


def good_fft_size_below(n: int) -> int:
    """Largest even 5-smooth integer <= n."""
    m = int(n)
    while m > 2:
        if m % 2 == 0 and _is_5_smooth(m):
            return m
        m -= 1
    return 2


def _is_5_smooth(m: int) -> bool:
    for p in (2, 3, 5):
        while m % p == 0:
            m //= p
    return m == 1


def auto_imsize(cell_arcsec: float, pb_level: float, freq_hz: float, max_imsize: int) -> int:
    """Image side covering the primary beam down to ``pb_level``, capped and FFT-friendly."""
    diameter = 2 * math.degrees(pb_radius_rad(pb_level, freq_hz)) * 3600 * IMSIZE_MARGIN
    n = max(MIN_IMSIZE, int(math.ceil(diameter / cell_arcsec)))
    size = good_fft_size(n)
    return size if size <= max_imsize else good_fft_size_below(max_imsize)


@dataclass(frozen=True)
class MsSummary:
    """What the imaging geometry needs from an MS."""

    b_max_m: float
    f_min_hz: float
    f_max_hz: float
    has_corrected: bool
    chan_width_hz: float = 0.0
    """Channel width (the largest, if they differ)."""
    n_chan: int = 0
    """Channels per spectral window (the smallest, if they differ)."""

    @property
    def bandwidth_hz(self) -> float:
        return self.f_max_hz - self.f_min_hz + self.chan_width_hz

    @property
    def reffreq_hz(self) -> float:
        """tclean's default mfs reference frequency: the middle of the band."""
        return (self.f_min_hz + self.f_max_hz) / 2


def summarize_ms(ms: Path) -> MsSummary:
    """Longest projected baseline, frequency range and data columns of an MS."""
    tb = casa_env.casatools().table()
    tb.open(str(ms))
    try:
        uvw = tb.getcol("UVW")
        cross = tb.getcol("ANTENNA1") != tb.getcol("ANTENNA2")
        flagged = tb.getcol("FLAG_ROW")
        has_corrected = "CORRECTED_DATA" in tb.colnames()
    finally:
        tb.close()
    use = cross & ~flagged
    if not np.any(use):
        raise PermanentError(f"{ms} has no unflagged cross-correlations; nothing to image")
    b_max = float(np.max(np.hypot(uvw[0, use], uvw[1, use])))
    tb.open(str(ms / "SPECTRAL_WINDOW"))
    try:
        per_spw = [np.ravel(tb.getcell("CHAN_FREQ", i)) for i in range(tb.nrows())]
        widths = np.concatenate([np.abs(np.ravel(tb.getcell("CHAN_WIDTH", i))) for i in range(tb.nrows())])
    finally:
        tb.close()
    freqs = np.concatenate(per_spw)
    return MsSummary(
        b_max_m=b_max, f_min_hz=float(freqs.min()), f_max_hz=float(freqs.max()), has_corrected=has_corrected,
        chan_width_hz=float(widths.max()), n_chan=int(min(len(f) for f in per_spw)),
    )


def combine_summaries(parts: list[MsSummary]) -> MsSummary:
    """The :class:`MsSummary` of several MSs imaged together (as of their concatenation).

    ``has_corrected`` is true only when every MS has CORRECTED_DATA.
    """
    if not parts:
        raise ValueError("no MS summary to combine")
    return MsSummary(
        b_max_m=max(p.b_max_m for p in parts), f_min_hz=min(p.f_min_hz for p in parts),
        f_max_hz=max(p.f_max_hz for p in parts), has_corrected=all(p.has_corrected for p in parts),
        chan_width_hz=max(p.chan_width_hz for p in parts), n_chan=min(p.n_chan for p in parts),
    )


def image_geometry(summary: MsSummary, settings: ImagingConfig) -> tuple[float, int]:
    """(cell in arcsec, image side in pixels) from the settings or automatically."""
    cell = settings.cell_arcsec or cell_from_baseline(summary.b_max_m, summary.f_max_hz)
    imsize = settings.imsize or auto_imsize(cell, settings.pb_limit, summary.reffreq_hz, settings.max_imsize)
    return cell, imsize


def bandwidth_smearing_loss(b_max_m: float, radius_rad: float, chan_width_hz: float) -> float:
    """Peak loss of the longest baseline for a source ``radius_rad`` from the phase centre.

    A rectangular channel of width dnu turns the fringe of baseline b into
    sinc(b theta dnu / c) (sinc(x) = sin(pi x) / (pi x)), independent of the
    frequency; the baseline average is smaller, so this is the worst case.
    """
    return float(1.0 - np.sinc(b_max_m * radius_rad * chan_width_hz / telescope.C_M_S))


def time_smearing_loss(track_wavelengths: float, radius_rad: float) -> float:
    """Peak loss of a visibility averaged along ``track_wavelengths`` of its uv track, ``radius_rad`` out.

    The fringe of a source at radius r turns by up to 2 pi L r across an
    averaged sample whose (u, v) moves L wavelengths: sinc(L r) at worst, for a
    source offset along the motion.
    """
    return float(1.0 - np.sinc(track_wavelengths * radius_rad))


def baseline_averaging_wavelengths(radius_rad: float, max_loss: float) -> float:
    """WSClean's ``-baseline-averaging`` size: the longest uv track (wavelengths) one averaged sample may span.

    The largest L with :func:`time_smearing_loss` (L, ``radius_rad``) <=
    ``max_loss``: a source at the image edge loses at most ``max_loss`` of its
    peak to the averaging, on top of the smearing of the native integrations
    (a baseline whose one integration already spans L is not averaged). 0 (no
    averaging) when ``max_loss`` is 0.
    """
    if max_loss <= 0 or radius_rad <= 0:
        return 0.0
    lo, hi = 0.0, 1.0  # 1 - sinc(x) rises from 0 to 1 on [0, 1]
    for _ in range(60):
        mid = (lo + hi) / 2
        if 1.0 - np.sinc(mid) <= max_loss:
            lo = mid
        else:
            hi = mid
    return lo / radius_rad


def channel_average_width(summary: MsSummary, radius_rad: float, max_loss: float) -> int:
    """Largest divisor w of the channels per window with smearing loss(w x width) <= ``max_loss``.

    1 (no averaging) when even one channel exceeds the limit, or the limit is 0.
    """
    best = 1
    if max_loss <= 0 or summary.n_chan < 2 or summary.chan_width_hz <= 0:
        return best
    for w in range(2, summary.n_chan + 1):
        if summary.n_chan % w:
            continue
        if bandwidth_smearing_loss(summary.b_max_m, radius_rad, w * summary.chan_width_hz) <= max_loss:
            best = w
    return best


def image_edge_radius_rad(cell_arcsec: float, imsize: int) -> float:
    """Half the image side: the farthest a cleaned source sits from the centre along an axis."""
    return math.radians(cell_arcsec * imsize / 2 / 3600)


def average_channels(ms: Path, out: Path, width: int, datacolumn: str) -> Path:
    """Average ``width`` channels into one with ``casatasks.split`` (``datacolumn`` becomes DATA)."""
    remove_path(out)
    casa_env.casatasks().split(vis=str(ms), outputvis=str(out), width=width, datacolumn=datacolumn,
                               keepflags=True)
    if not out.is_dir():
        raise RuntimeError(f"split made no channel-averaged MS {out}; see the CASA log {_casa_log()}")
    return out


# ---------------------------------------------------------------------------
# tclean
# ---------------------------------------------------------------------------


def tclean_parameters(
    ms: Path, imagename: Path, settings: ImagingConfig, *, cell_arcsec: float, imsize: int,
    vptable: Path, datacolumn: str,
) -> dict:
    """The tclean keyword arguments of a block image (deterministic, CASA-free)."""
    params = dict(
        vis=str(ms),
        imagename=str(imagename),
        datacolumn=datacolumn,
        specmode="mfs",
        stokes="I",
        imsize=[imsize, imsize],
        cell=f"{cell_arcsec}arcsec",
        gridder=settings.gridder,
        deconvolver=settings.deconvolver,
        weighting=settings.weighting,
        robust=settings.robust,
        niter=settings.niter,
        pblimit=settings.pb_limit,
        pbcor=True,
        vptable=str(vptable),
        savemodel="none",
        restart=False,
        interactive=False,
        parallel=False,
    )
    if settings.threshold_jy > 0:
        params.update(threshold=f"{settings.threshold_jy}Jy", nsigma=0.0)
    else:
        # Follow the noise tclean measures on the residual at each major cycle.
        params.update(threshold="0Jy", nsigma=settings.threshold_sigma)
    if settings.gridder == "wproject":
        params["wprojplanes"] = -1  # let CASA choose from the w range and image size
    if settings.deconvolver == "mtmfs":
        params["nterms"] = 2
    return params


def write_vptable(path: Path, reffreq_hz: float) -> Path:
    """Save an Airy voltage pattern of the 4.65 m DSA-110 dish as a VP table.

    tclean picks it by TELESCOPE_NAME "DSA-110" (set by :mod:`contimg.convert`).
    """
    vp = casa_env.casatools().vpmanager()
    vp.reset()
    ok = vp.setpbairy(
        telescope=telescope.TELESCOPE_NAME,
        dopb=True,
        dishdiam=f"{telescope.DISH_DIAMETER_M}m",
        blockagediam="0.0m",
        # Out to well past the first null at the lowest frequency.
        maxrad=f"{3 * math.degrees(telescope.primary_beam_fwhm_rad(reffreq_hz)):.3f}deg",
        reffreq=f"{reffreq_hz / 1e9:.6f}GHz",
    )
    if not ok or not vp.saveastable(str(path)):
        raise RuntimeError(f"vpmanager could not save the DSA-110 Airy beam to {path}")
    return path


def casa_image_name(kind: str, deconvolver: str) -> str:
    """CASA image suffix of a product kind (mtmfs appends .tt0)."""
    if deconvolver != "mtmfs":
        return kind
    return {"image": "image.tt0", "image.pbcor": "image.tt0.pbcor", "pb": "pb.tt0", "residual": "residual.tt0"}[kind]


def tclean_workdir(products: BlockProducts) -> Path:
    """Private directory (inside the products directory) that tclean writes into."""
    return temporary_name(products.image_prefix)


def casa_image(workdir: Path, products: BlockProducts, kind: str, deconvolver: str) -> Path:
    """Path of one CASA image tclean wrote in ``workdir``."""
    return workdir / f"{products.block_id}.{casa_image_name(kind, deconvolver)}"


# ---------------------------------------------------------------------------
# the block image
# ---------------------------------------------------------------------------


def needs_concat(settings: ImagingConfig) -> bool:
    """Whether the backend images one concatenated block MS (tclean) rather than the subband MSs (wsclean)."""
    return settings.backend == "tclean"


def image_block(
    ms: str | os.PathLike | list[str | os.PathLike],
    products: BlockProducts,
    settings: ImagingConfig,
    *,
    block_id: str,
    extra_header: dict | None = None,
) -> ImageResult:
    """Make, export and measure the Stokes I image of a block with ``settings.backend``.

    Parameters
    ----------
    ms : path or list of path
        tclean: the block's concatenated MS (one path). wsclean: the block's
        subband MSs (or one MS). CORRECTED_DATA is imaged when present.
    products : BlockProducts
        Where the images go (``products.directory``).
    settings : ImagingConfig
        Imaging settings; ``cell_arcsec = 0`` and ``imsize = 0`` are automatic.
    block_id : str
        Written as BLOCKID; must be ``products.block_id``.
    extra_header : dict, optional
        More FITS keys: ``{key: value}`` or ``{key: (value, comment)}``.

    Returns
    -------
    ImageResult

    Raises
    ------
    PermanentError
        A missing MS or one with nothing to image.
    TransientError
        Lack of space or permission while writing images.
    """
    if settings.backend == "wsclean":
        from . import wsclean

        paths = [ms] if isinstance(ms, (str, os.PathLike)) else list(ms)
        return wsclean.image_block(paths, products, settings, block_id=block_id, extra_header=extra_header)
    if not isinstance(ms, (str, os.PathLike)):
        if len(ms) != 1:
            raise ValueError(f"block {block_id}: tclean images one MS, got {len(ms)}; concatenate them "
                             "(concat_subbands) or set imaging.backend = 'wsclean'")
        ms = ms[0]
    t0 = time.perf_counter()
    ms = Path(ms)
    if block_id != products.block_id:
        raise ValueError(f"block id {block_id!r} differs from the products' {products.block_id!r}")
    if not ms.is_dir():
        raise PermanentError(f"block {block_id}: MS {ms} does not exist; concatenate the block's subbands first")
    products.directory.mkdir(parents=True, exist_ok=True)

    summary = summarize_ms(ms)
    cell, imsize = image_geometry(summary, settings)
    _check_free_space(products.directory, imsize, block_id)
    seconds: dict[str, float] = {}
    with private_workdir(products) as workdir:  # tclean would otherwise continue from stale images
        datacolumn = "corrected" if summary.has_corrected else "data"
        width = channel_average_width(summary, image_edge_radius_rad(cell, imsize), settings.max_bandwidth_smearing)
        vis = ms
        if width > 1:
            t = time.perf_counter()
            vis = average_channels(ms, workdir / f"{block_id}.avg{width}.ms", width, datacolumn)
            datacolumn = "data"
            seconds["average"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        vptable = write_vptable(workdir / "dsa110_airy.vp", summary.reffreq_hz)
        beam_inputs = primary_beam.read_beam_inputs(ms)
        seconds["vp"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        params = tclean_parameters(
            vis, workdir / products.block_id, settings, cell_arcsec=cell, imsize=imsize, vptable=vptable,
            datacolumn=datacolumn,
        )
        log.info("block %s: tclean cell %.3g arcsec, imsize %d", block_id, cell, imsize)
        clean_summary = casa_env.casatasks().tclean(**params) or {}
        seconds["tclean"] = round(time.perf_counter() - t, 3)
        fits_paths = finish_products(
            lambda header: export_products(workdir, products, settings.deconvolver, header),
            products, summary, settings, beam_inputs, extra_header, seconds)
    stats = measure_products(fits_paths, block_id, seconds, t0)
    return ImageResult(
        block_id=block_id,
        ms_path=str(ms),
        fits={k: str(v) for k, v in fits_paths.items()},
        cell_arcsec=cell,
        imsize=imsize,
        iterations=int(clean_summary.get("iterdone", -1)),
        stop_reason=str(clean_summary.get("stopDescription", "")),
        seconds=seconds,
        primary_beam=settings.primary_beam,
        channel_average=width,
        bandwidth_hz=summary.bandwidth_hz,
        backend="tclean",
        ms_paths=[str(ms)],
        **stats,
    )


@contextlib.contextmanager
def private_workdir(products: BlockProducts):
    """The imager's private working directory (``.{block_id}.partial/``), empty, removed afterwards (both backends).

    A lack of space or permission inside becomes a :class:`TransientError`.
    """
    workdir = tclean_workdir(products)
    try:
        remove_path(workdir)
        workdir.mkdir()
        yield workdir
    except (OSError, RuntimeError) as e:
        if is_disk_error(e):
            raise TransientError(
                f"block {products.block_id}: writing images in {products.directory} failed ({e}); free space there"
            ) from e
        raise
    finally:
        remove_path(workdir)


def finish_products(export, products: BlockProducts, summary: MsSummary, settings: ImagingConfig, beam_inputs,
                    extra_header: dict | None, seconds: dict[str, float]) -> dict[str, Path]:
    """Export the imager's outputs with complete headers, then write pb and image.pbcor (both backends).

    ``export(header)`` moves the imager's image and residual into place as
    FITS products and returns their paths by kind.
    """
    t = time.perf_counter()
    header = product_header(summary, settings)
    header.update(extra_header or {})
    fits_paths = export(header)
    seconds["export"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    write_primary_beam_products(fits_paths, products, beam_inputs, settings)
    seconds["pb"] = round(time.perf_counter() - t, 3)
    return fits_paths


def measure_products(fits_paths: dict[str, Path], block_id: str, seconds: dict[str, float], t0: float) -> dict:
    """Peak, rms and beam of the finished image (:func:`measure_image`); logs the step seconds."""
    t = time.perf_counter()
    stats = measure_image(fits_paths["image"], fits_paths["image.pbcor"])
    seconds["measure"] = round(time.perf_counter() - t, 3)
    seconds["total"] = round(time.perf_counter() - t0, 3)
    # One parseable line (bench/block.py reads it from the worker log): the
    # products database keeps only the image step's total.
    log.info("block %s: image steps %s", block_id, json.dumps(seconds))
    return stats


def product_header(summary: MsSummary, settings: ImagingConfig) -> dict:
    """FITS keys every product of a block image gets besides the imager's (both backends)."""
    return {"BANDWID": (summary.bandwidth_hz, "[Hz] total bandwidth imaged"),
            "PBMODEL": (settings.primary_beam, "primary beam: drift-averaged Airy or tracking"),
            "IMAGER": (settings.backend, "imaging backend: tclean or wsclean")}


def _check_free_space(directory: Path, imsize: int, block_id: str) -> None:
    # About ten float32 images of imsize^2 at once (CASA images plus FITS).
    need = 10 * 4 * imsize * imsize * 1.2
    free = shutil.disk_usage(directory).free
    if free < need:
        raise TransientError(
            f"block {block_id}: only {free / 1e6:.0f} MB free in {directory}, imaging needs about "
            f"{need / 1e6:.0f} MB; free space there"
        )


def _casa_log() -> str:
    return os.environ.get("CONTIMG_CASA_LOGFILE", "(CASA log)")


# ---------------------------------------------------------------------------
# FITS export and measurements
# ---------------------------------------------------------------------------


def export_products(
    workdir: Path, products: BlockProducts, deconvolver: str, extra_header: dict
) -> dict[str, Path]:
    """Export tclean's image and residual to FITS atomically and complete their headers."""
    cta = casa_env.casatasks()
    block_id = products.block_id
    beam = _restoring_beam(casa_image(workdir, products, "image", deconvolver), block_id)
    out: dict[str, Path] = {}
    for kind in CASA_EXPORTED_KINDS:
        src = casa_image(workdir, products, kind, deconvolver)
        if not src.is_dir():
            raise RuntimeError(f"block {block_id}: tclean made no {src.name}; see the CASA log {_casa_log()}")
        final = products.fits(kind)
        tmp = temporary_name(final)
        remove_path(tmp)
        try:
            cta.exportfits(imagename=str(src), fitsimage=str(tmp), overwrite=True, history=False)
            if not tmp.is_file():
                raise RuntimeError(f"block {block_id}: exportfits wrote no {tmp}; see the CASA log {_casa_log()}")
            complete_header(tmp, kind=kind, block_id=block_id, beam=beam, extra=extra_header)
            os.replace(tmp, final)
        except BaseException:
            remove_path(tmp)
            raise
        out[kind] = final
    return out


def write_primary_beam_products(
    fits_paths: dict[str, Path], products: BlockProducts, inputs: primary_beam.BeamInputs,
    settings: ImagingConfig,
) -> None:
    """Write the ``pb`` and ``image.pbcor`` FITS from the block's beam, atomically.

    pb: :func:`primary_beam.beam_on_image` on the image's pixels (drift-averaged
    unless ``settings.primary_beam == "tracking"``). image.pbcor: image / pb,
    NaN where pb < ``settings.pb_limit`` or the image is masked. Headers are
    the image's (beam, DATE-OBS, frequency, BLOCKID, ...), BUNIT empty for pb.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(fits_paths["image"]) as hdul:
        header = hdul[0].header.copy()
        data = np.asarray(hdul[0].data, dtype=np.float32)
    plane = sky_plane(data)
    pb = primary_beam.beam_on_image(
        WCS(header).celestial, plane.shape, inputs, drift=settings.primary_beam == "drift"
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        pbcor = np.where(pb >= settings.pb_limit, plane / pb, np.nan).astype(np.float32)
    pb_header = header.copy()
    pb_header["BUNIT"] = ("", "primary-beam power response (dimensionless)")
    for kind, values, h in (("pb", pb, pb_header), ("image.pbcor", pbcor, header)):
        final = products.fits(kind)
        tmp = temporary_name(final)
        try:
            fits.PrimaryHDU(values.reshape(data.shape), header=h).writeto(tmp, overwrite=True)
            os.replace(tmp, final)
        except BaseException:
            remove_path(tmp)
            raise
        fits_paths[kind] = final


def _restoring_beam(image: Path, block_id: str) -> tuple[float, float, float]:
    """(major, minor) in degrees and position angle in degrees of a CASA image."""
    ia = casa_env.casatools().image()
    ia.open(str(image))
    try:
        b = ia.restoringbeam()
    finally:
        ia.close()
    if not b or "major" not in b:
        raise RuntimeError(f"block {block_id}: {image.name} has no restoring beam; the clean failed")
    qa = casa_env.casatools().quanta()
    return (
        qa.convert(b["major"], "deg")["value"],
        qa.convert(b["minor"], "deg")["value"],
        qa.convert(b["positionangle"], "deg")["value"],
    )


def complete_header(path: Path, *, kind: str, block_id: str, beam: tuple[float, float, float], extra: dict) -> None:
    """Add BLOCKID, TELESCOP, the beam, BUNIT, MJD-OBS and ``extra`` to a FITS file in place."""
    from astropy.io import fits

    with fits.open(path, mode="update") as hdul:
        h = hdul[0].header
        h["BLOCKID"] = (block_id, "contimg block id (earliest subband start, UTC)")
        h["TELESCOP"] = telescope.TELESCOPE_NAME
        # exportfits writes the beam only for the restored images; every
        # product gets it so that each file stands alone.
        h["BMAJ"], h["BMIN"], h["BPA"] = beam
        if kind == "pb":
            h["BUNIT"] = ("", "primary-beam power response (dimensionless)")
        elif not h.get("BUNIT"):
            h["BUNIT"] = "Jy/beam"
        if "DATE-OBS" in h and "MJD-OBS" not in h:
            from astropy.time import Time

            h["MJD-OBS"] = (Time(h["DATE-OBS"], scale="utc").mjd, "start of the observation (UTC)")
        for key, value in extra.items():
            h[key] = value
        for key in ("DATE-OBS", "BUNIT", "BMAJ"):
            if key not in h:
                raise RuntimeError(f"block {block_id}: {path.name} lacks {key} after export")
        if "FREQ" not in [h.get(f"CTYPE{i}") for i in range(1, h["NAXIS"] + 1)]:
            raise RuntimeError(f"block {block_id}: {path.name} has no frequency axis")


def measure_image(image_fits: Path, pbcor_fits: Path) -> dict:
    """Beam, reference frequency, phase centre, peak and robust rms of a block image."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(image_fits) as hdul:
        h = hdul[0].header
        data = np.asarray(hdul[0].data, dtype=np.float64)
    plane = sky_plane(data)
    with fits.open(pbcor_fits) as hdul:
        pbcor = sky_plane(np.asarray(hdul[0].data, dtype=np.float64))

    finite = np.isfinite(plane)
    if not finite.any():
        raise PermanentError(f"{image_fits} holds no finite pixel; the block has no usable data")
    iy, ix = np.unravel_index(np.nanargmax(np.where(finite, plane, -np.inf)), plane.shape)
    ra, dec = WCS(h).celestial.pixel_to_world_values(ix, iy)

    beam_pix = h["BMAJ"] / abs(h["CDELT2"])
    yy, xx = np.indices(plane.shape)
    far = (np.hypot(yy - iy, xx - ix) > RMS_EXCLUSION_BEAMS * beam_pix) & finite
    if far.sum() < 100:  # a small image: use all pixels rather than too few
        far = finite
    values = plane[far]
    rms = MAD_TO_SIGMA * float(np.median(np.abs(values - np.median(values))))

    freq_axis = next(i for i in range(1, h["NAXIS"] + 1) if h.get(f"CTYPE{i}") == "FREQ")
    return dict(
        reffreq_hz=float(h[f"CRVAL{freq_axis}"]),
        phase_center_ra_deg=float(h["CRVAL1"]),
        phase_center_dec_deg=float(h["CRVAL2"]),
        beam_major_arcsec=float(h["BMAJ"]) * 3600,
        beam_minor_arcsec=float(h["BMIN"]) * 3600,
        beam_pa_deg=float(h["BPA"]),
        rms_jy=rms,
        peak_jy=float(plane[iy, ix]),
        peak_pbcor_jy=float(pbcor[iy, ix]),
        peak_ra_deg=float(ra),
        peak_dec_deg=float(dec),
    )


