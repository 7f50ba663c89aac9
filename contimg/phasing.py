"""Phase centres and UVW geometry of DSA-110 data.

Frames
------
A DSA-110 dish is fixed at the meridian at a fixed elevation, so the direction
it looks at, and the direction each raw integration is fringe-stopped at, is a
fixed point of the *observed* hour-angle/declination frame: hour angle 0 and the
pointing declination, topocentric, of date, without refraction. That is what
pyuvdata makes of the raw files' "driftscan" centre in the "altaz" frame (it
turns alt/az into hour angle and declination with ``erfa.ae2hd`` and the site's
geodetic latitude), so the pointing declination in
``extra_keywords['phase_center_dec']`` is read as that observed (of-date)
declination, not an ICRS one.

To image, a block is phased to one fixed ICRS position: the point that is on
the meridian at the pointing declination at the block's mid-time. Going from
the observed frame to ICRS (astropy's ``HADec`` frame with pressure 0, then
``ICRS``) undoes precession since J2000 (per year about 3.07 s + 1.34 s
sin(RA) tan(Dec) in RA and 20 arcsec cos(RA) in declination: a few tenths of a
degree by 2025), nutation (~17 arcsec), annual aberration (up to ~20 arcsec)
and diurnal aberration (~0.3 arcsec). pyuvdata's own ICRS-to-apparent step (erfa
``atco13``) is the inverse of that chain to milliarcseconds, so phasing to the
result puts the phase centre back on the meridian at the pointing declination
at the mid-time.

UVWs are always computed from antenna positions, the site, the times and the
phase-centre catalogue, never taken from (or scaled to fit) the file's stored
UVWs, which are float32 for the DSA-110 and may follow other timing
conventions for other telescopes.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import telescope

# Warnings pyuvdata gives by design when we replace UVWs without touching the
# visibilities: that is exactly the point here (see recompute_geometry).
_UVW_WARNING = "Recalculating uvw_array without adjusting visibility phases"


def hadec_to_icrs(time_jd, ha_rad, dec_rad, *, location=None) -> tuple[float, float]:
    """ICRS position of a fixed observed hour angle and declination at a time.

    Parameters
    ----------
    time_jd : float
        UTC Julian date.
    ha_rad, dec_rad : float
        Observed (topocentric, of date, no refraction) hour angle and
        declination, radians.
    location : astropy.coordinates.EarthLocation, optional
        Observatory; default the DSA-110 site (:func:`telescope.site_location`).

    Returns
    -------
    ra_rad, dec_rad : float
        ICRS right ascension in [0, 2 pi) and declination, radians.
    """
    from astropy import units as u
    from astropy.coordinates import HADec, ICRS, SkyCoord
    from astropy.time import Time

    loc = location if location is not None else telescope.site_location()
    frame = HADec(obstime=Time(time_jd, format="jd", scale="utc"), location=loc, pressure=0 * u.hPa)
    icrs = SkyCoord(ha=ha_rad * u.rad, dec=dec_rad * u.rad, frame=frame).transform_to(ICRS())
    return float(icrs.ra.wrap_at(360 * u.deg).rad), float(icrs.dec.rad)


def meridian_icrs(time_jd: float, dec_rad: float, *, location=None) -> tuple[float, float]:
    """ICRS position of the meridian point at the pointing declination.

    Parameters
    ----------
    time_jd : float
        UTC Julian date.
    dec_rad : float
        Pointing declination, radians, in the observed (of-date) frame that
        the fixed dish and the raw files' driftscan centre live in.
    location : astropy.coordinates.EarthLocation, optional
        Observatory; default the DSA-110 site.

    Returns
    -------
    ra_rad, dec_rad : float
        ICRS coordinates, radians. The RA is close to the local apparent
        sidereal time minus the equation of the equinoxes and precession since
        J2000; the declination differs from ``dec_rad`` by precession,
        nutation and aberration (tenths of a degree at most).
    """
    return hadec_to_icrs(time_jd, 0.0, dec_rad, location=location)


def block_phase_center(block_mid_jd: float, dec_rad: float) -> tuple[float, float]:
    """The phase centre of a block: the meridian point at the block mid-time.

    Every subband of a block must be phased to this one position (they are
    converted on different nodes and then concatenated into one field), so it
    depends only on the block's mid-time and pointing declination, and the
    DSA-110 site from :mod:`contimg.telescope`, never on the file at hand.

    Parameters
    ----------
    block_mid_jd : float
        UTC Julian date of the middle of the block.
    dec_rad : float
        Pointing declination (observed frame), radians.

    Returns
    -------
    ra_rad, dec_rad : float
        ICRS, radians.
    """
    return meridian_icrs(block_mid_jd, dec_rad)


def phase_center_name(ra_rad: float, dec_rad: float) -> str:
    """Field name of a phase centre, ``JHHMMSS.s+DDMMSS``, from its ICRS position.

    Subbands of a block get the same name because they get the same position,
    which lets concatenation merge them into one field.
    """
    ra_s = round(math.degrees(ra_rad % (2 * math.pi)) / 15 * 3600, 1) % 86400
    hh, rem = divmod(ra_s, 3600)
    mm, ss = divmod(rem, 60)
    sign = "+" if dec_rad >= 0 else "-"
    dec_as = round(abs(math.degrees(dec_rad)) * 3600)
    dd, rem = divmod(dec_as, 3600)
    dm, ds = divmod(rem, 60)
    return f"J{int(hh):02d}{int(mm):02d}{ss:04.1f}{sign}{int(dd):02d}{int(dm):02d}{int(ds):02d}"


def recompute_geometry(uvd) -> None:
    """Recompute LSTs, apparent phase-centre positions and UVWs in place.

    Everything is derived from the times, the telescope location, the antenna
    positions and the phase-centre catalogue; the stored LSTs, apparent
    coordinates and UVWs are discarded. The visibilities are left as they are:
    they are fringe-stopped at the catalogue centre by the correlator, whatever
    the stored UVWs say (the ATA test file's stored UVWs, for instance, differ
    from its antenna positions by up to 0.8 m, a timestamp convention, while
    its data are phased at 3C286).

    Parameters
    ----------
    uvd : pyuvdata.UVData
        Modified in place.
    """
    uvd.set_lsts_from_time_array()
    # pyuvdata's readers call this helper to fill the apparent coordinates;
    # there is no public equivalent that leaves the visibilities untouched.
    uvd._set_app_coords_helper()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_UVW_WARNING)
        uvd.set_uvws_from_antenna_positions(update_vis=False)


def uvw_check(uvd, rows: np.ndarray | None = None) -> dict[str, float]:
    """Compare a data set's UVWs with UVWs recomputed from antenna positions.

    Parameters
    ----------
    uvd : pyuvdata.UVData
        Not modified; only its metadata is copied.
    rows : ndarray of int, optional
        Ascending indices of the rows to compare (default: all); only those
        are copied and recomputed.

    Returns
    -------
    dict
        ``max_m`` and ``rms_m``: largest and root-mean-square length of the
        difference vector, metres. About 0.0 after conversion (operators'
        validation rule, FIELD-NOTES §1).
    """
    if rows is None:
        ref, uvw = uvd.copy(metadata_only=True), uvd.uvw_array
    else:
        ref, uvw = select_rows(uvd, rows), uvd.uvw_array[rows]
    recompute_geometry(ref)
    diff = np.linalg.norm(np.asarray(uvw, dtype=np.float64) - ref.uvw_array, axis=1)
    if diff.size == 0:
        return {"max_m": 0.0, "rms_m": 0.0}
    return {"max_m": float(diff.max()), "rms_m": float(np.sqrt(np.mean(diff**2)))}


# ---------------------------------------------------------------------------
# the same geometry, once per time
# ---------------------------------------------------------------------------
#
# Every quantity of the geometry but the UVWs depends on a row only through its
# time and its phase centre, and pyuvdata computes them once per time anyway;
# a UVW is the difference of two antennas' rotated positions. The functions
# below compute the geometry on one row per (time, phase centre) with pyuvdata
# itself and spread it to all rows, which is 60 times less work for the
# DSA-110 (117 antennas, 6903 baselines per time) and the same numbers.


def rows_per_time(uvd):
    """One row per distinct (time, phase centre) of ``uvd``, as a small metadata-only UVData.

    Parameters
    ----------
    uvd : pyuvdata.UVData
        Not modified.

    Returns
    -------
    small : pyuvdata.UVData
        Metadata-only copy of the first row of each distinct (time, phase
        centre id), in file order; its catalogue is ``uvd``'s.
    index : ndarray of int, shape (Nblts,)
        Row of ``small`` that each row of ``uvd`` shares its time and phase
        centre with.
    """
    times = np.asarray(uvd.time_array)
    ids = np.asarray(uvd.phase_center_id_array)
    if ids.size and np.all(ids == ids[0]):
        _, first, key = np.unique(times, return_index=True, return_inverse=True)
    else:
        _, time_key = np.unique(times, return_inverse=True)
        _, id_key = np.unique(ids, return_inverse=True)
        _, first, key = np.unique(time_key * (id_key.max() + 1) + id_key, return_index=True, return_inverse=True)
    order = np.argsort(first)
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    index = position[key.ravel()]
    small = select_rows(uvd, first[order])
    if not (np.array_equal(small.time_array[index], times)
            and np.array_equal(small.phase_center_id_array[index], ids)):
        raise RuntimeError("pyuvdata's select did not keep the rows in order; use recompute_geometry")
    return small, index


def select_rows(uvd, rows: np.ndarray):
    """Copy of some rows of ``uvd``, as pyuvdata's ``select(blt_inds=rows, inplace=False)``.

    pyuvdata's ``select`` copies every row before dropping most of them (5 to
    10 ms of metadata for a full DSA-110 file, more with data); here the deep
    copy is handed the selected rows in place of the full per-row arrays
    (``copy.deepcopy``'s memo), and pyuvdata's ``select`` then recounts
    baselines, times, antennas and the rectangularity on the copy.

    Parameters
    ----------
    uvd : pyuvdata.UVData
        Not modified.
    rows : ndarray of int
        Ascending row indices.

    Returns
    -------
    pyuvdata.UVData
    """
    import copy

    rows = np.asarray(rows)
    memo = {}
    for name in uvd:  # the UVParameters
        param = getattr(uvd, name)
        if param.value is not None and isinstance(param.form, tuple) and "Nblts" in param.form:
            memo[id(param.value)] = np.take(param.value, rows, axis=param.form.index("Nblts"))
    small = copy.deepcopy(uvd, memo)
    small.Nblts = rows.size
    small.select(blt_inds=np.arange(rows.size), run_check=False)
    return small


def spread_geometry(uvd, small, index: np.ndarray) -> None:
    """Give every row of ``uvd`` the geometry of its row of ``small``, UVWs from antenna positions.

    After :func:`rows_per_time` and any of :func:`recompute_geometry` or
    pyuvdata's ``phase`` on ``small``, this leaves ``uvd`` as the same calls on
    ``uvd`` itself would: LSTs, apparent coordinates, frame position angles,
    phase-centre ids, catalogue and Nphase from ``small``, UVWs by
    :func:`antenna_uvws` (equal to pyuvdata's per-row ones bit for bit).

    Parameters
    ----------
    uvd : pyuvdata.UVData
        Modified in place.
    small, index
        As returned by :func:`rows_per_time` for ``uvd``, ``small`` since rephased.
    """
    uvd.lst_array = small.lst_array[index]
    uvd.phase_center_app_ra = small.phase_center_app_ra[index]
    uvd.phase_center_app_dec = small.phase_center_app_dec[index]
    uvd.phase_center_frame_pa = small.phase_center_frame_pa[index]
    uvd.phase_center_id_array = small.phase_center_id_array[index]
    uvd.phase_center_catalog = small.phase_center_catalog
    uvd.Nphase = small.Nphase
    uvd.uvw_array = antenna_uvws(small, index, uvd.ant_1_array, uvd.ant_2_array)


def antenna_uvws(small, index: np.ndarray, ant_1_array: np.ndarray, ant_2_array: np.ndarray) -> np.ndarray:
    """UVWs of baselines from antenna positions, the antennas rotated once per row of ``small``.

    pyuvdata's ``calc_uvw`` (``use_ant_pos=True``) rotates the antenna positions
    once per distinct hour angle and declination and subtracts the two
    antennas' rotated positions for each row; this does the same rotations
    (pyuvdata's own rotation functions, with the same arguments) and the same
    subtraction, without pyuvdata's Python loops over rows, so the UVWs are
    pyuvdata's bit for bit (tests/test_phasing.py holds them to that).

    Parameters
    ----------
    small : pyuvdata.UVData
        Geometry (LSTs, apparent coordinates, frame position angles, phase
        centres) once per time and centre, from :func:`rows_per_time`.
    index : ndarray of int, shape (Nrows,)
        Row of ``small`` holding each baseline's time and centre.
    ant_1_array, ant_2_array : ndarray of int, shape (Nrows,)
        Antenna numbers of each baseline.

    Returns
    -------
    ndarray of float64, shape (Nrows, 3)
        Metres; ENU where every row is unprojected, as pyuvdata gives them.
    """
    from pyuvdata.utils.phasing import _rotate_one_axis, _rotate_two_axis

    tel = small.telescope
    numbers = np.asarray(tel.antenna_numbers)
    lookup = np.full(int(numbers.max()) + 1, -1, dtype=np.intp)
    lookup[numbers] = np.arange(numbers.size)
    ant_1, ant_2 = lookup[ant_1_array], lookup[ant_2_array]  # the check guarantees known antennas
    lon = tel.location.lon.rad
    if np.all(small._check_for_cat_type("unprojected")):
        # pyuvdata's to_enu: one rotation, to the zenith
        gha, dec, pa = np.zeros(1) - lon, np.zeros(1) + tel.location.lat.rad, None
        base = np.zeros(np.shape(index), dtype=np.intp)
    else:
        gha = (small.lst_array - small.phase_center_app_ra) - lon
        dec, pa = small.phase_center_app_dec, small.phase_center_frame_pa
        base = np.asarray(index, dtype=np.intp) * numbers.size
    rotated = np.reshape(
        np.transpose(
            _rotate_one_axis(
                _rotate_two_axis(np.transpose(tel.antenna_positions)[np.newaxis, :, :],
                                 rot_amount1=gha, rot_amount2=dec, rot_axis1=2, rot_axis2=1),
                rot_amount=pa, rot_axis=0,
            ),
            axes=[0, 2, 1],
        ),
        (-1, 3),
    )[:, [1, 2, 0]]  # projected XYZ to uvw, as calc_uvw ends
    # np.take: the same gather as fancy indexing, several times faster for rows
    uvw = np.take(rotated, base + ant_2, axis=0)
    return np.subtract(uvw, np.take(rotated, base + ant_1, axis=0), out=uvw)
