"""What a simulated night observes: the scenario, the array preset and the sky.

A :class:`Scenario` says when (date, start, blocks), where (pointing
declination), with which array (a :class:`Preset`), which sources (explicit,
a transiting calibrator, random ones) and which faults. It is validated on
construction; a malformed one raises :class:`~contimg.errors.ConfigError` (a
ValueError) naming the key. docs/simulation.md describes the TOML form.

Sources are unpolarised point sources with ``S(nu) = S_1.4GHz (nu / 1.4 GHz)
** alpha``, optionally scaled block by block (``flux_per_block``, e.g. an
extreme-scattering-event dip).

Directions are ITRS unit vectors. The apparent direction of a source at time
``t`` is astropy's ICRS -> ITRS transform *with the site as observer*, so it
carries annual and diurnal aberration and polar motion: the place pyuvdata
computes with ERFA (``atco13``) when it phases data, to milliarcseconds. The
geocentric ITRS frame would be off by the ~0.2 arcsec diurnal aberration,
several degrees of phase on an outrigger baseline.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from contimg import telescope as tel
from contimg.errors import ConfigError

REFERENCE_FREQ_HZ = 1.4e9
DEFAULT_SPECTRAL_INDEX = -0.7

# Random sky: dN/dS ~ S**-2 between these limits gives a handful of Jy-level
# sources among a hundred or two, the rest tens to hundreds of mJy.
RANDOM_FLUX_MIN_JY = 0.02
RANDOM_FLUX_MAX_JY = 5.0
RANDOM_ALPHA_MEAN = -0.7
RANDOM_ALPHA_STD = 0.2
# Half-width of the random-source strip, in primary-beam FWHMs at the band bottom.
STRIP_HALF_WIDTH_FWHM = 2.0
# Random sources are named SIM0000, SIM0001, ...; other sources may not use such names.
RANDOM_NAME = re.compile(r"SIM\d{4,}")


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """Array and spectral size of a simulation.

    Attributes
    ----------
    name : str
        Key in PRESETS.
    station_numbers : tuple of int or None
        Stations used; ``None`` for all 117.
    n_channels : int
        Channels per subband; the subband keeps its 11.72 MHz, so fewer
        channels are wider (and their noise lower).
    description : str
        One line for ``contimg simulate --help``.
    """

    name: str
    station_numbers: tuple[int, ...] | None
    n_channels: int
    description: str

    @cached_property
    def stations(self) -> tuple[tel.Station, ...]:
        every = tel.stations()
        if self.station_numbers is None:
            return every
        by_number = {s.number: s for s in every}
        return tuple(by_number[n] for n in self.station_numbers)

    @property
    def n_antennas(self) -> int:
        return len(self.stations)

    @property
    def n_baselines(self) -> int:
        """Baselines per integration, autocorrelations included."""
        return self.n_antennas * (self.n_antennas + 1) // 2

    @property
    def channel_width_hz(self) -> float:
        return tel.channel_width(self.n_channels)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(Nblts, Nfreqs, Npols) of one subband file."""
        return (tel.N_INTEGRATIONS * self.n_baselines, self.n_channels, len(tel.POLARIZATIONS))

    @property
    def file_bytes(self) -> int:
        """Size of one subband file's data: complex64 visibilities, bool flags, float32 nsamples."""
        return int(np.prod(self.data_shape)) * (8 + 1 + 4)


# Both arms of the T with uneven spacings (no strong grating lobes in a
# 5-minute snapshot PSF). `small` and `tiny` stay in the core (longest baseline
# ~480 m) so that an image of the whole primary beam is ~700 pixels and a block
# images in seconds; `tiny-wide` adds outriggers (2.3-2.7 km, with DSA-117, the
# station without a listed elevation) for tests that need long baselines.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("full", None, tel.N_CHANNELS, "all 117 stations, 48 channels per subband (~430 MB per file)"),
        Preset(
            "small",
            (1, 3, 6, 8, 14, 19, 22, 27, 33, 40, 44, 47, 51)  # east-west arm
            + (52, 54, 58, 61, 64, 71, 79, 84, 88, 95, 102),  # north-south arm
            12,
            "24 core stations (both arms), 12 channels per subband (~5 MB per file)",
        ),
        Preset(
            "tiny",
            (1, 8, 22, 35, 47, 51) + (54, 64, 71, 79, 92, 102),
            4,
            "12 core stations (both arms), 4 channels per subband, for tests",
        ),
        Preset(
            "tiny-wide",
            (1, 8, 22, 35, 51) + (54, 64, 79, 102) + (104, 110, 117),
            4,
            "12 stations (both arms, 3 outriggers), 4 channels per subband, for long-baseline tests",
        ),
    )
}


# --------------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class Source:
    """An unpolarised point source.

    Attributes
    ----------
    name : str
        Unique within a scenario.
    ra_deg, dec_deg : float
        ICRS position, degrees.
    flux_jy : float
        Stokes I flux density at 1.4 GHz, Jy.
    spectral_index : float
        ``alpha`` in ``S ~ nu ** alpha``.
    flux_per_block : tuple of float or None
        Multiplies ``flux_jy`` block by block (one factor per block); ``None``
        for a steady source.
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = DEFAULT_SPECTRAL_INDEX
    flux_per_block: tuple[float, ...] | None = None

    def block_scale(self, block: int) -> float:
        """Flux scale of this source in ``block`` (1 for a steady source)."""
        return 1.0 if self.flux_per_block is None else float(self.flux_per_block[block])

    def to_dict(self, n_blocks: int) -> dict:
        """JSON-ready description, with the 1.4 GHz flux of every block."""
        out = asdict(self)
        out["flux_per_block"] = None if self.flux_per_block is None else list(self.flux_per_block)
        out["flux_jy_per_block"] = [self.flux_jy * self.block_scale(b) for b in range(n_blocks)]
        return out


@dataclass(frozen=True)
class Calibrator:
    """A bright point source placed to transit during one block.

    When ``name`` is in the calibrator catalogue (``contimg.calibrators``,
    e.g. ``SIMCAL54``), the omitted ``flux_jy``, ``spectral_index``,
    ``ra_deg`` and ``dec_deg`` come from the catalogue (see :meth:`resolved`),
    so the pipeline finds the simulated calibrator where the catalogue says.

    Attributes
    ----------
    flux_jy : float or None
        Flux density at 1.4 GHz, Jy; required unless ``name`` is catalogued.
    block : int or None
        Block at whose nominal midpoint the source transits when ``ra_deg`` is
        omitted.
    name : str
    ra_deg, dec_deg : float or None
        ICRS position; ``ra_deg`` defaults to transit at mid-``block``,
        ``dec_deg`` to the pointing declination.
    spectral_index : float
    """

    flux_jy: float | None = None
    block: int | None = None
    name: str = "CAL1"
    ra_deg: float | None = None
    dec_deg: float | None = None
    spectral_index: float | None = None

    def resolved(self) -> "Calibrator":
        """This calibrator with omitted values taken from the catalogue entry of its name.

        A name that is not catalogued keeps its values; the spectral index
        then defaults to DEFAULT_SPECTRAL_INDEX.
        """
        from contimg import calibrators

        entry = calibrators.lookup(self.name)
        if entry is None:
            alpha = DEFAULT_SPECTRAL_INDEX if self.spectral_index is None else self.spectral_index
            return dataclasses.replace(self, spectral_index=alpha)
        ra = self.ra_deg if self.ra_deg is not None else (entry.ra_deg if self.block is None else None)
        return dataclasses.replace(
            self,
            flux_jy=entry.flux_jy if self.flux_jy is None else self.flux_jy,
            spectral_index=entry.spectral_index if self.spectral_index is None else self.spectral_index,
            ra_deg=ra,
            dec_deg=entry.dec_deg if self.dec_deg is None else self.dec_deg,
        )


FAULT_KINDS = ("drop", "truncate")


@dataclass(frozen=True)
class Fault:
    """A subband file of a block that goes wrong.

    Attributes
    ----------
    block, subband : int
    kind : str
        ``"drop"`` (never written) or ``"truncate"`` (written, then cut to
        ``keep_fraction`` of its bytes so that HDF5 cannot open it).
    keep_fraction : float
    """

    block: int
    subband: int
    kind: str
    keep_fraction: float = 0.4


@dataclass(frozen=True)
class Scenario:
    """Everything that defines a simulated night; validated on construction.

    Attributes
    ----------
    date : str
        UTC date of the first block, ``YYYY-MM-DD``.
    start : str
        UTC start of the first block, ``HH:MM:SS``.
    n_blocks : int
        Number of blocks (24 integrations each).
    block_cadence_s : float or None
        Seconds between block starts; ``None``: one block duration (309.2 s),
        so blocks are contiguous.
    dec_deg : float
        Pointing declination, degrees.
    preset : str
        Key of PRESETS.
    seed : int
        Seed of every random draw (sky, jitter, gains, noise).
    gains : bool
        Apply per-antenna, per-feed complex gains (else gains = 1).
    noise : bool
        Add thermal noise.
    n_random_sources : int
        Random sources spread over the strip the night sweeps.
    start_jitter_s : float
        Each subband file starts uniformly within +- this of its block's
        nominal start.
    gain_drift : float
        Per-block random-walk step of the gains (fractional amplitude, and
        radians of phase); 0 keeps them constant all night.
    sources : tuple of Source
        Explicit sources.
    calibrator : Calibrator or None
    faults : tuple of Fault
    rfi : bool
        Add seeded radio-frequency interference (a few persistent narrow-band
        channels and some short bursts on the baselines of a few antennas,
        strong compared with the noise); recorded in truth.json.
    catalogue_calibrators : bool
        Put every catalogued calibrator inside the swept strip on the sky, as
        the real sky has them (the pipeline solves on any block that sees one).
        Off only for tests that need a sky of exactly the listed sources.
    """

    date: str = "2025-10-05"
    start: str = "03:00:00"
    n_blocks: int = 6
    block_cadence_s: float | None = None
    dec_deg: float = 54.6
    preset: str = "small"
    seed: int = 42
    gains: bool = True
    noise: bool = True
    n_random_sources: int = 150
    start_jitter_s: float = 60.0
    gain_drift: float = 0.0
    sources: tuple[Source, ...] = ()
    calibrator: Calibrator | None = None
    faults: tuple[Fault, ...] = ()
    rfi: bool = False
    catalogue_calibrators: bool = True

    def __post_init__(self):
        _validate_scenario(self)

    @property
    def cadence_s(self) -> float:
        return tel.BLOCK_DURATION_S if self.block_cadence_s is None else self.block_cadence_s

    def block_start(self, block: int):
        """Nominal start (astropy Time, UTC) of ``block``."""
        from astropy import units as u
        from astropy.time import Time

        return Time(f"{self.date}T{self.start}", format="isot", scale="utc") + block * self.cadence_s * u.s

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Scenario":
        """Build from a mapping (a parsed TOML document); ConfigError names the bad key."""
        _reject_unknown(data, cls, "")
        kwargs = dict(data)
        if "sources" in kwargs:
            tables = _tables(kwargs["sources"], "sources")
            kwargs["sources"] = tuple(_build(Source, t, f"sources[{i}].") for i, t in enumerate(tables))
        if "calibrator" in kwargs:
            kwargs["calibrator"] = _build(Calibrator, kwargs["calibrator"], "calibrator.")
        if "faults" in kwargs:
            tables = _tables(kwargs["faults"], "faults")
            kwargs["faults"] = tuple(_build(Fault, t, f"faults[{i}].") for i, t in enumerate(tables))
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "Scenario":
        """Read a scenario file; a malformed one raises ConfigError naming the file and key."""
        path = Path(path)
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read scenario file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"scenario file {path} is not valid TOML: {e}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """JSON-ready echo; unset optional values are left out (as in TOML)."""
        out = asdict(self)
        if out["calibrator"] is not None:
            out["calibrator"] = {k: v for k, v in out["calibrator"].items() if v is not None}
        for src in out["sources"]:
            if src["flux_per_block"] is None:
                del src["flux_per_block"]
            else:
                src["flux_per_block"] = list(src["flux_per_block"])
        out["sources"], out["faults"] = list(out["sources"]), list(out["faults"])
        return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- validation

_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
# Scalar fields and their types; nested tables are checked by their own class.
_FIELD_TYPES: dict[type, dict[str, type]] = {
    Scenario: {
        "date": str, "start": str, "n_blocks": int, "block_cadence_s": float, "dec_deg": float,
        "preset": str, "seed": int, "gains": bool, "noise": bool, "n_random_sources": int,
        "start_jitter_s": float, "gain_drift": float, "rfi": bool,
        "catalogue_calibrators": bool,
    },
    Source: {"name": str, "ra_deg": float, "dec_deg": float, "flux_jy": float, "spectral_index": float},
    Calibrator: {
        "flux_jy": float, "block": int, "name": str, "ra_deg": float, "dec_deg": float, "spectral_index": float,
    },
    Fault: {"block": int, "subband": int, "kind": str, "keep_fraction": float},
}


def _bad(key: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"scenario key {key!r}: expected {expected}, got {got!r}")


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise _bad(key, expected, got)


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_fields(obj: Any, cls: type, key: str) -> None:
    _check(isinstance(obj, cls), key, f"a {cls.__name__.lower()} table", obj)
    for name, kind in _FIELD_TYPES[cls].items():
        value = getattr(obj, name)
        if value is not None and not _is(value, kind):
            raise _bad(f"{key}.{name}".lstrip("."), _KIND_WORDS[kind], value)


def _reject_unknown(table: Any, cls: type, prefix: str) -> None:
    _check(isinstance(table, Mapping), prefix.rstrip(".") or "scenario", "a table", table)
    known = [f.name for f in fields(cls)]
    for key in table:
        if key not in known:
            raise ConfigError(f"scenario key {prefix + key!r} is not known; expected one of: {', '.join(known)}")
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in table:
            raise ConfigError(f"scenario key {prefix + f.name!r} is missing; it is required")


def _tables(value: Any, key: str) -> list:
    _check(isinstance(value, list | tuple), key, f"an array of tables ([[{key}]])", value)
    return list(value)


def _build(cls: type, table: Any, prefix: str):
    _reject_unknown(table, cls, prefix)
    kwargs = dict(table)
    if isinstance(kwargs.get("flux_per_block"), list):
        kwargs["flux_per_block"] = tuple(kwargs["flux_per_block"])
    return cls(**kwargs)


def _validate_scenario(sc: Scenario) -> None:
    """Types and ranges of every field; raises ConfigError naming the key."""
    _check_fields(sc, Scenario, "")
    for key, fmt, words in (("date", "%Y-%m-%d", "a date YYYY-MM-DD"), ("start", "%H:%M:%S", "a time HH:MM:SS")):
        try:
            datetime.strptime(getattr(sc, key), fmt)
        except ValueError:
            raise _bad(key, words, getattr(sc, key)) from None
    horizon = tel.SITE_LAT_DEG - 90.0
    _check(sc.n_blocks >= 1, "n_blocks", "an integer >= 1", sc.n_blocks)
    _check(sc.cadence_s > 0, "block_cadence_s", "seconds > 0", sc.block_cadence_s)
    in_sky = f"degrees in ({horizon:.2f}, 90] (above the horizon at transit)"
    _check(horizon < sc.dec_deg <= 90.0, "dec_deg", in_sky, sc.dec_deg)
    _check(sc.preset in PRESETS, "preset", "one of " + ", ".join(PRESETS), sc.preset)
    _check(sc.seed >= 0, "seed", "an integer >= 0", sc.seed)
    _check(sc.n_random_sources >= 0, "n_random_sources", "an integer >= 0", sc.n_random_sources)
    jitter_ok = 0 <= sc.start_jitter_s <= 0.5 * sc.cadence_s
    _check(jitter_ok, "start_jitter_s", "seconds in [0, half the block cadence]", sc.start_jitter_s)
    _check(sc.gain_drift >= 0, "gain_drift", "a number >= 0", sc.gain_drift)
    _check(isinstance(sc.sources, list | tuple), "sources", "a list of sources", sc.sources)
    taken = [] if sc.calibrator is None else [sc.calibrator.name]
    if sc.calibrator is not None:
        _validate_calibrator(sc.calibrator, sc.n_blocks)
        _check(not RANDOM_NAME.fullmatch(sc.calibrator.name), "calibrator.name", "a name not like SIMnnnn", taken[0])
    for i, src in enumerate(sc.sources):
        _validate_source(src, f"sources[{i}]", sc.n_blocks)
        unique = src.name not in taken and not RANDOM_NAME.fullmatch(src.name)
        _check(unique, f"sources[{i}].name", "a name of no other source, not like SIMnnnn (random sources)", src.name)
        taken.append(src.name)
    _check(isinstance(sc.faults, list | tuple), "faults", "a list of faults", sc.faults)
    for i, fault in enumerate(sc.faults):
        _validate_fault(fault, f"faults[{i}]", sc.n_blocks)
        unique = (fault.block, fault.subband) not in [(f.block, f.subband) for f in sc.faults[:i]]
        _check(unique, f"faults[{i}]", "at most one fault per block and subband", fault)


def _validate_source(src: Any, key: str, n_blocks: int) -> None:
    _check_fields(src, Source, key)
    _check(0.0 <= src.ra_deg < 360.0, key + ".ra_deg", "degrees in [0, 360)", src.ra_deg)
    _check(-90.0 <= src.dec_deg <= 90.0, key + ".dec_deg", "degrees in [-90, 90]", src.dec_deg)
    _check(src.flux_jy >= 0.0, key + ".flux_jy", "a flux density >= 0 Jy", src.flux_jy)
    fpb = src.flux_per_block
    if fpb is not None:
        ok = isinstance(fpb, list | tuple) and len(fpb) == n_blocks and all(_is(x, float) and x >= 0 for x in fpb)
        _check(ok, key + ".flux_per_block", f"a list of {n_blocks} scale factors >= 0, one per block", fpb)


def _validate_calibrator(cal: Any, n_blocks: int) -> None:
    _check_fields(cal, Calibrator, "calibrator")
    cal = cal.resolved()
    _check(cal.flux_jy is not None, "calibrator.flux_jy", "a flux density (required unless the name is catalogued)",
           cal.flux_jy)
    placed = cal.ra_deg is not None or cal.block is not None
    _check(placed, "calibrator.block", "a block index (or give calibrator.ra_deg)", cal.block)
    if cal.block is not None:
        _check(0 <= cal.block < n_blocks, "calibrator.block", f"a block index in [0, {n_blocks - 1}]", cal.block)
    if cal.ra_deg is not None:
        _check(0.0 <= cal.ra_deg < 360.0, "calibrator.ra_deg", "degrees in [0, 360)", cal.ra_deg)
    if cal.dec_deg is not None:
        _check(-90.0 <= cal.dec_deg <= 90.0, "calibrator.dec_deg", "degrees in [-90, 90]", cal.dec_deg)
    _check(cal.flux_jy >= 0.0, "calibrator.flux_jy", "a flux density >= 0 Jy", cal.flux_jy)


def _validate_fault(fault: Any, key: str, n_blocks: int) -> None:
    _check_fields(fault, Fault, key)
    _check(0 <= fault.block < n_blocks, key + ".block", f"a block index in [0, {n_blocks - 1}]", fault.block)
    last = tel.N_SUBBANDS - 1
    _check(0 <= fault.subband <= last, key + ".subband", f"a subband in [0, {last}]", fault.subband)
    _check(fault.kind in FAULT_KINDS, key + ".kind", " or ".join(repr(k) for k in FAULT_KINDS), fault.kind)
    _check(0.0 < fault.keep_fraction < 1.0, key + ".keep_fraction", "a fraction in (0, 1)", fault.keep_fraction)


# --------------------------------------------------------------------------- sky


def spectral_fluxes(sources: Sequence[Source], freq_hz: np.ndarray, block: int) -> np.ndarray:
    """Flux densities (Jy) of ``sources`` at ``freq_hz`` in ``block``, shape (n_sources, n_freqs)."""
    s = np.array([src.flux_jy * src.block_scale(block) for src in sources])
    alpha = np.array([src.spectral_index for src in sources])
    ratio = np.asarray(freq_hz, dtype=float)[None, :] / REFERENCE_FREQ_HZ
    return s[:, None] * ratio ** alpha[:, None]


def phase_centre_itrs(dec_deg: float) -> np.ndarray:
    """ITRS unit vector of hour angle 0, declination ``dec_deg``, at the site longitude.

    The DSA-110 points and fringe-stops here; it is fixed on the Earth, so
    the sky drifts through it.
    """
    lon, dec = np.radians(tel.SITE_LON_DEG), np.radians(dec_deg)
    return np.array([np.cos(dec) * np.cos(lon), np.cos(dec) * np.sin(lon), np.sin(dec)])


def meridian_altaz_deg(dec_deg: float) -> tuple[float, float]:
    """(azimuth, altitude) in degrees of hour angle 0, declination ``dec_deg``.

    North (az 0) when the declination is north of the geodetic latitude, else
    south (az 180); altitude ``90 - |lat - dec|``.
    """
    az = 0.0 if dec_deg > tel.SITE_LAT_DEG else 180.0
    return az, 90.0 - abs(tel.SITE_LAT_DEG - dec_deg)


def itrs_directions(ra_deg: Sequence[float], dec_deg: Sequence[float], times) -> np.ndarray:
    """Apparent topocentric ITRS unit vectors of sources at ``times``.

    Parameters
    ----------
    ra_deg, dec_deg : array, shape (n_sources,)
        ICRS positions, degrees.
    times : astropy.time.Time, shape (n_times,)

    Returns
    -------
    ndarray, shape (n_sources, n_times, 3)
    """
    from astropy import units as u
    from astropy.coordinates import ITRS, SkyCoord

    ra = np.atleast_1d(np.asarray(ra_deg, dtype=float))
    if ra.size == 0:
        return np.zeros((0, times.size, 3))
    dec = np.atleast_1d(np.asarray(dec_deg, dtype=float))
    coord = SkyCoord(ra=ra[:, None] * u.deg, dec=dec[:, None] * u.deg, frame="icrs")
    frame = ITRS(obstime=times.reshape(1, -1), location=tel.site_location())
    xyz = np.moveaxis(coord.transform_to(frame).cartesian.xyz.value, 0, -1)
    return xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)


def angle_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle (radians) between unit vectors along the last axis; broadcasts."""
    return np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1))


def hour_angle_rad(direction: np.ndarray) -> np.ndarray:
    """Local hour angle (radians, -pi..pi) at the site of ITRS unit vectors."""
    lon_dir = np.arctan2(direction[..., 1], direction[..., 0])
    return np.angle(np.exp(1j * (np.radians(tel.SITE_LON_DEG) - lon_dir)))


def transit_ra_deg(dec_deg: float, time) -> float:
    """ICRS right ascension of a source at ``dec_deg`` that transits at ``time``.

    Starts from the local apparent sidereal time and removes the residual hour
    angle (precession, nutation, aberration) by fixed-point steps.
    """
    from astropy import units as u

    ra = time.sidereal_time("apparent", longitude=tel.SITE_LON_DEG * u.deg).deg
    for _ in range(4):
        ha = hour_angle_rad(itrs_directions([ra], [dec_deg], time.reshape(1))[0, 0])
        ra = (ra + np.degrees(ha)) % 360.0
    return float(ra)


def strip_box(
    dec_deg: float, lst_start_deg: float, lst_end_deg: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """RA/Dec box around the strip the beam sweeps between two sidereal times.

    Padded by STRIP_HALF_WIDTH_FWHM primary-beam FWHMs (at the bottom of the
    band, where the beam is widest) on every side.

    Returns
    -------
    (ra_lo, ra_hi), (dec_lo, dec_hi) : degrees; ``ra_hi`` may exceed 360.
    """
    pad = STRIP_HALF_WIDTH_FWHM * np.degrees(tel.primary_beam_fwhm_rad(tel.BAND_BOTTOM_HZ))
    dec_lo, dec_hi = max(dec_deg - pad, -90.0), min(dec_deg + pad, 90.0)
    widest = max(abs(dec_lo), abs(dec_hi))
    ra_pad = 180.0 if widest >= 89.0 else min(180.0, pad / np.cos(np.radians(widest)))
    span = (lst_end_deg - lst_start_deg) % 360.0
    if span + 2 * ra_pad >= 360.0:
        return (0.0, 360.0), (dec_lo, dec_hi)
    return (lst_start_deg - ra_pad, lst_start_deg + span + ra_pad), (dec_lo, dec_hi)


def random_sky(
    n_sources: int,
    rng: np.random.Generator,
    *,
    ra_range_deg: tuple[float, float],
    dec_range_deg: tuple[float, float],
) -> list[Source]:
    """Random point sources, uniform on the sphere inside an RA/Dec box.

    Fluxes follow ``dN/dS ~ S**-2`` between RANDOM_FLUX_MIN_JY and
    RANDOM_FLUX_MAX_JY; spectral indices are normal(-0.7, 0.2). ``ra_range_deg``
    may wrap through 0 (``hi`` above 360). Names are ``SIM0000``, ``SIM0001``, ...
    """
    ra_lo, ra_hi = ra_range_deg
    sin_lo, sin_hi = np.sin(np.radians(dec_range_deg))
    ra = (ra_lo + rng.uniform(0.0, 1.0, n_sources) * (ra_hi - ra_lo)) % 360.0
    dec = np.degrees(np.arcsin(rng.uniform(sin_lo, sin_hi, n_sources)))
    flux = 1.0 / rng.uniform(1.0 / RANDOM_FLUX_MAX_JY, 1.0 / RANDOM_FLUX_MIN_JY, n_sources)  # inverse CDF
    alpha = rng.normal(RANDOM_ALPHA_MEAN, RANDOM_ALPHA_STD, n_sources)
    return [
        Source(f"SIM{i:04d}", round(r, 6) % 360.0, round(d, 6), round(s, 6), round(a, 4))
        for i, (r, d, s, a) in enumerate(zip(ra.tolist(), dec.tolist(), flux.tolist(), alpha.tolist()))
    ]
