"""The one typed configuration of contimg.

Values come from, in increasing priority: the defaults below, a TOML file
(``--config PATH``, else ``$CONTIMG_CONFIG``, else ``./contimg.toml`` when it
exists), and environment variables ``CONTIMG_<SECTION>__<KEY>`` (for a node:
``CONTIMG_NODES__<NODE>__<KEY>``). Every value remembers where it came from;
``contimg config show`` prints both.

Relative paths in a file are taken relative to that file's directory; relative
defaults and environment values relative to the working directory. After
loading, every path is absolute, so workers started elsewhere see the same
roots.

A malformed or inconsistent configuration raises :class:`ConfigError` whose
message names the key.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .telescope import N_SUBBANDS

ENV_PREFIX = "CONTIMG_"
DEFAULT_FILE = "contimg.toml"
DEFAULT_BASE = "contimg-work"


@dataclass
class PathsConfig:
    """Where data live."""

    data_root: Path = Path(DEFAULT_BASE) / "data"
    """Raw subband files (``*_sbNN.hdf5``) arrive here."""
    products_root: Path = Path(DEFAULT_BASE) / "products"
    """Per-block products (concatenated MS, FITS images)."""
    archive_root: Path = Path(DEFAULT_BASE) / "archive"
    """The shared archive that products are ingested into."""
    scratch_root: Path = Path(DEFAULT_BASE) / "scratch"
    """Default node-local scratch; a node's own ``scratch_root`` overrides it."""
    allowed_roots: list[Path] = field(default_factory=list)
    """Extra roots a task may read from (besides data_root); paths in messages are checked."""


@dataclass
class BrokerConfig:
    """Redis as broker and result store."""

    url: str = ""
    """``redis://[:password@]host:port/db``; empty means a private local Redis (``--local``)."""
    visibility_timeout_s: int = 6 * 3600
    """Redelivery of unacknowledged messages; above the longest task (FIELD-NOTES §4)."""
    result_expires_s: int = 7 * 24 * 3600
    """Chord counters and results live this long; far above the longest chord wait."""
    task_time_limit_s: int = 1200
    """Hard limit per task: a hung task is killed and recorded."""
    worker_max_memory_mb: int = 8192
    """A worker's pool process is replaced after a task leaves it above this resident size
    (CASA grows slowly); replacing it after every N tasks instead cost seconds per N tasks."""
    task_events: bool = False
    """Workers send task events from the start. Off (the default), they start silent and send
    them once asked: Flower asks every 5 s while it runs (its live view needs them), as does
    ``celery -A contimg.tasks.app control enable_events``. The events cost about a quarter of
    the orchestration's time per block (bench/orchestration.py), so nights nobody watches skip them."""
    task_sent_events: bool = False
    """Senders also publish a ``task-sent`` event per task, so Flower lists tasks still waiting
    in a queue (state SENT). Off by default: one more publish per task, and ``contimg nodes``
    already counts what waits in each node's queue."""
    log_task_lines: bool = False
    """Workers log Celery's two INFO lines per task ("received", "succeeded in ..." and
    "retry"). Off by default: the products database (``contimg status``) and Flower say the
    same, and on a night of no-op stages the lines cost 15-20 % of the workers' CPU
    (bench/orchestration.py). Failures (ERROR) and contimg's own lines are logged either way."""


@dataclass
class DatabaseConfig:
    """The products database."""

    url: str = ""
    """Any SQLAlchemy URL; empty means SQLite at ``{products_root}/contimg.sqlite``."""


@dataclass
class NodeConfig:
    """One processing node: its queue, NVMe scratch and subbands."""

    name: str
    subbands: list[int]
    """Subbands whose files this node holds (0..15)."""
    imaging: bool = False
    """Whether this node runs the per-block callback (concatenate, image)."""
    scratch_root: Path | None = None
    """Node-local scratch; defaults to ``{paths.scratch_root}/{name}``."""

    @property
    def queue(self) -> str:
        """The Celery queue of this node."""
        return self.name


@dataclass
class PipelineConfig:
    """How blocks are formed and processed."""

    block_tolerance_s: float = 60.0
    """Subband files whose start times differ by at most this belong to one block."""
    min_subbands: int = 12
    """A block is imaged only if at least this many subbands converted."""
    max_retries: int = 3
    """Retries of a transient fault, with exponential backoff and jitter."""
    keep_scratch_on_failure: bool = False
    """Keep a failed block's scratch directory for debugging."""
    converter: str = "fast"
    """UVH5 to MS: ``fast`` (:mod:`contimg.fast_convert`, streamed, same MS) or ``pyuvdata`` (read, then write_ms)."""
    stage_set: str = "science"
    """``science`` (convert, flag, calibrate, image) or ``noop``: every stage only checks its input
    file and sleeps ``noop_seconds``, to measure orchestration overhead and to rehearse faults."""
    noop_seconds: float = 0.0
    """Seconds each no-op subband stage sleeps (``stage_set = "noop"`` only)."""
    night_mosaics: bool = True
    """Mosaic each night once it has ended and all its submitted blocks have (a task on the first
    imaging node; ``contimg mosaic --night`` does it by hand). Science stage set only."""


@dataclass
class DispatchConfig:
    """Dynamic dispatch of blocks from the Redis work queue (contimg/dispatch.py)."""

    max_inflight_per_node: int = 2
    """Blocks in flight per imaging node at most (K)."""
    lease_s: float = 1800.0
    """A block whose tasks show no sign of life for this long is handed out again."""
    max_attempts: int = 3
    """Times a block is handed out before it is failed (expired leases)."""
    poll_s: float = 0.5
    """How often the dispatcher fills free slots and reaps expired leases."""
    node_check_s: float = 30.0
    """How often the dispatcher asks which nodes have a live worker (0: never). A block in flight
    whose subbands wait on a node with no worker keeps its lease and is shown as waiting for that
    node, instead of being handed out again; it goes on when the node returns."""


@dataclass
class ImagingConfig:
    """Settings of the Stokes I block image (tclean or WSClean)."""

    backend: str = "tclean"
    """Imager: ``tclean`` (CASA, on the concatenated block MS) or ``wsclean`` (WSClean with the wgridder, on the subband MSs directly; no concatenation)."""
    niter: int = 2000
    """Maximum clean iterations (0 would be a dirty image; the pipeline cleans)."""
    threshold_jy: float = 0.0
    """Absolute clean threshold; 0 means ``threshold_sigma`` times the measured noise."""
    threshold_sigma: float = 4.0
    """Clean down to this many times the noise measured on the dirty image."""
    cell_arcsec: float = 0.0
    """Pixel size; 0 means a fifth of the synthesized beam from the longest baseline."""
    imsize: int = 0
    """Image side in pixels; 0 means cover the primary beam down to ``pb_limit``."""
    max_imsize: int = 4096
    """Upper bound on the automatic image size."""
    pb_limit: float = 0.2
    """Primary-beam level that the image covers and below which it is masked."""
    weighting: str = "briggs"
    """Weighting (both backends): natural, uniform or briggs."""
    robust: float = 0.0
    """Briggs robust parameter."""
    gridder: str = "standard"
    """tclean gridder (standard or wproject); WSClean always uses its wgridder."""
    deconvolver: str = "hogbom"
    """tclean deconvolver; WSClean uses its own clean."""
    primary_beam: str = "drift"
    """``drift``: the Airy beam averaged over the block's drift (transit dishes); ``tracking``: centred on the phase centre."""
    max_bandwidth_smearing: float = 0.01
    """Channels are averaged before imaging only while the peak loss of the longest baseline at the image edge stays below this."""
    max_time_smearing: float = 0.01
    """WSClean: baseline-dependent time averaging, only as far as the extra peak loss at the image edge stays below this (0: none; docs/imaging.md)."""
    wsclean_mgain: float = 0.9
    """WSClean major-cycle gain: each minor cycle cleans this fraction of the peak residual before the next major cycle (0.9: one major cycle fewer than 0.8 on a full block, same photometry; docs/imaging.md)."""
    wgridder_accuracy: float = 1e-3
    """WSClean: the wgridder's target relative accuracy (``-wgridder-accuracy``; WSClean's own default 1e-4). On the full block 1e-3 makes each gridder call 1.4x faster (WSClean as a whole 1.15x) and moves the image by 0.1 of the noise (docs/imaging.md)."""


IMAGING_BACKENDS = ("tclean", "wsclean")
STAGE_SETS = ("science", "noop")
CONVERTERS = ("fast", "pyuvdata")
FLAGGING_STRATEGIES = ("none", "tfcrop", "rflag", "tfcrop+rflag", "aoflagger", "sumthreshold")
WITHOUT_CALIBRATION = ("wait", "uncalibrated", "fail")


@dataclass
class FlaggingConfig:
    """Flagging in the per-subband step (see docs/calibration.md)."""

    strategy: str = "sumthreshold"
    """RFI flagging: sumthreshold (contimg's own SumThreshold, in memory), aoflagger (Debian's AOFlagger with contimg's strategy), casatasks.flagdata's tfcrop, rflag or tfcrop+rflag, or none."""
    bad_antennas: list[str] = field(default_factory=list)
    """Antennas known bad: ``"DSA-003"`` (every night) or ``"2025-10-05:DSA-003"`` (that UTC date only)."""
    auto_outlier_factor: float = 3.0
    """An antenna whose median autocorrelation power is this factor above or below the array median is flagged."""
    tfcrop_timecutoff: float = 4.0
    """tfcrop: flag beyond this many sigma from the fitted time shape."""
    tfcrop_freqcutoff: float = 3.0
    """tfcrop: flag beyond this many sigma from the fitted bandpass shape."""
    rflag_timedevscale: float = 5.0
    """rflag: threshold on the local time r.m.s., in units of its median."""
    rflag_freqdevscale: float = 5.0
    """rflag: threshold on the spectral r.m.s., in units of its median."""
    aoflagger_strategy: str = ""
    """strategy = "aoflagger": a Lua strategy file; empty: contimg/resources/aoflagger-dsa110.lua."""
    threads: int = 0
    """Threads of the RFI step (AOFlagger's -j, the sumthreshold kernel); 0: the cores this process may run on."""
    sumthreshold_threshold: float = 6.0
    """strategy = "sumthreshold": the single-sample threshold of the last round, in robust sigma."""
    sumthreshold_sir_eta: float = 0.2
    """strategy = "sumthreshold": the SIR operator's eta (0: off)."""
    use_autocorrelations: bool = True
    """Find dead and noisy antennas from their autocorrelations; false for data whose autocorrelations are missing or untrustworthy (the ATA test file)."""


@dataclass
class CalibrationConfig:
    """Calibrator blocks, bandpass and gain solutions, and their application."""

    min_apparent_jy: float = 5.0
    """A block whose beam sees a catalogued calibrator at least this bright (beam-attenuated) is a calibrator block."""
    max_offset_deg: float = 0.3
    """...and that passes within this angle of the pointing during the block: the sky drifts ~0.37 deg (dec 54.6) to ~0.6 deg (dec 16.3) in half a block, so one block per transit, two when it falls on a boundary."""
    validity_window_s: float = 6 * 3600.0
    """Caltables apply to target blocks at most this far in time, either direction."""
    refant: str = ""
    """Reference antenna name(s) for CASA (``"DSA-051"`` or a comma list); empty: the least flagged antenna."""
    bandpass_solint: str = "inf"
    """casatasks.bandpass solint (one per-channel solution per calibrator block by default)."""
    solint: str = "inf"
    """casatasks.gaincal solint of the amplitude-and-phase gains."""
    minsnr: float = 3.0
    """Solutions below this signal-to-noise ratio are flagged."""
    without_calibration: str = "uncalibrated"
    """A target block with no valid caltables: wait (for a later calibrator), uncalibrated (image DATA) or fail."""
    include_synthetic_calibrators: bool = True
    """Keep the simulator's synthetic catalogue entries (SIMCAL*) when looking for calibrator blocks; set false on real data, where they are blank sky (docs/calibration.md)."""


@dataclass
class SurveyConfig:
    """The survey science: reference catalogue, forced photometry, flux scale, ESE search (docs/survey.md)."""

    match_radius_beams: float = 0.5
    """A mosaic detection within this many restoring-beam majors (FWHM) of a catalogue source is that source."""
    catalogue_min_snr: float = 7.0
    """Mosaic detections below this signal-to-noise ratio are not added to the catalogue."""
    edge_beams: float = 2.0
    """Forced photometry flags a source within this many beam majors of the image edge or a blank pixel."""
    min_pb: float = 0.3
    """Forced photometry flags a source where the block's primary-beam response is below this."""
    blend_beams: float = 1.5
    """Catalogue sources closer than this many beam majors are fitted jointly and flagged as a blend."""
    reference_min_snr: float = 30.0
    """A catalogue source is a flux-scale reference when its mosaic SNR reaches this (and it is isolated and clean)."""
    reference_min_block_snr: float = 10.0
    """...and a reference counts in a block only where its forced SNR there reaches this."""
    min_references: int = 5
    """A block with fewer usable references gets no flux scale (scale 1, flagged) and says so."""
    reference_clip_sigma: float = 3.0
    """References whose ratio deviates by more than this many robust sigma are rejected from the scale."""
    ese_fpr: float = 1e-4
    """False-alarm probability per source for `contimg ese` (0.1 false candidates per 1000 steady sources)."""


WATCH_INOTIFY = ("auto", "on", "off")


@dataclass
class WatchConfig:
    """``contimg watch INCOMING``: when a subband file has landed and a block is ready (contimg/watch.py)."""

    settle_s: float = 10.0
    """A file has landed when its size and mtime have not changed for this long AND it then opens with h5py
    with its Header group readable. Both: a writer that stalls longer than this leaves a stable but truncated
    file (the HDF5 check fails), and an HDF5 file can open while its writer still appends (the header comes
    first). The file is never opened before it has been stable this long."""
    block_timeout_s: float = 600.0
    """A block still incomplete this long after its first file appeared is submitted with the files that have
    landed; the other subbands are recorded as missing (or as unreadable). Survives restarts of the watcher."""
    poll_s: float = 10.0
    """Rescan interval: how soon a new file is noticed without inotify, and the safety-net rescan with it
    (events are only hints). Settling and timeouts are checked when due, whatever this is."""
    use_inotify: str = "auto"
    """``auto``: Linux inotify, but polling on network file systems (NFS, CIFS, Lustre...: files written by other
    hosts send no events) or when inotify fails; ``on``: inotify or an error; ``off``: polling only."""


@dataclass
class FlowerConfig:
    """Flower, the Celery monitor (``contimg flower``; docs/deployment.md)."""

    address: str = "127.0.0.1"
    """Address Flower listens on; anything but loopback requires ``basic_auth``."""
    port: int = 5555
    """Port Flower listens on."""
    basic_auth: str = ""
    """``user:password`` (several separated by commas); put it in the environment
    (``CONTIMG_FLOWER__BASIC_AUTH``), not in a shared file."""
    url_prefix: str = ""
    """Path prefix when Flower sits behind a reverse proxy (``flower``)."""


NOTIFY_EVENTS = ("run_done", "run_failed", "night_done", "night_failed")


@dataclass
class NotifyConfig:
    """Email and webhook notifications when a run or a night finishes (contimg/notify.py; docs/deployment.md)."""

    smtp_host: str = ""
    """SMTP server that relays the emails; empty turns email off."""
    smtp_port: int = 25
    """SMTP port (25 or 587 with ``smtp_starttls``)."""
    smtp_user: str = ""
    """SMTP login; empty means no login."""
    smtp_password: str = ""
    """SMTP password; a secret: put it in the environment (``CONTIMG_NOTIFY__SMTP_PASSWORD``), not in a shared file."""
    smtp_starttls: bool = False
    """Upgrade the SMTP connection with STARTTLS (certificate checked) before logging in and sending."""
    smtp_timeout_s: float = 10.0
    """Seconds to connect to and talk with the SMTP server before giving up."""
    sender: str = "contimg@localhost"
    """The From address."""
    recipients: list[str] = field(default_factory=list)
    """Addresses every email goes to (``["ops@example.org", "Night Shift <night@example.org>"]``)."""
    webhook_url: str = ""
    """http(s) URL that receives each notification as a JSON POST; empty turns the webhook off. It may hold a
    token: put it in the environment (``CONTIMG_NOTIFY__WEBHOOK_URL``)."""
    webhook_timeout_s: float = 10.0
    """Seconds to wait for the webhook's answer before giving up."""
    weblog_base_url: str = ""
    """The URL at which ``paths.products_root`` is served: a run's weblog link is
    ``{weblog_base_url}/runs/{run_id}/index.html``, a night's ``{weblog_base_url}/nights/{date}/index.html``;
    empty gives file:// links to the same files."""
    on: list[str] = field(default_factory=lambda: list(NOTIFY_EVENTS))
    """Events that are sent: any of run_done, run_failed, night_done, night_failed."""
    check_s: float = 5.0
    """How often the dispatcher looks for newly finished runs and nights."""
    max_age_h: float = 48.0
    """Runs and nights that finished longer ago than this are never sent (marked skipped instead), so that turning
    notifications on for an old database does not mail its whole history."""


@dataclass
class Config:
    """The effective configuration."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    nodes: dict[str, NodeConfig] = field(default_factory=dict)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    imaging: ImagingConfig = field(default_factory=ImagingConfig)
    flagging: FlaggingConfig = field(default_factory=FlaggingConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    survey: SurveyConfig = field(default_factory=SurveyConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    archive: ArchiveConfig = field(default_factory=lambda: ArchiveConfig())
    """Defined at the end of this module (``[archive]``)."""
    source: dict[str, str] = field(default_factory=dict, repr=False)
    """Where each dotted key's value came from: default, file:PATH or env:VAR."""
    file: Path | None = None
    """The TOML file that was read, if any."""

    # -- derived views -------------------------------------------------
    def node(self, name: str) -> NodeConfig:
        try:
            return self.nodes[name]
        except KeyError:
            raise ConfigError(
                f"node {name!r} is not in the node map (known: {', '.join(self.nodes)}); "
                "add [nodes.%s] to the config" % name
            ) from None

    def node_for_subband(self, subband: int) -> NodeConfig:
        for n in self.nodes.values():
            if subband in n.subbands:
                return n
        raise ConfigError(f"nodes: no node holds subband {subband}")

    def imaging_nodes(self) -> list[NodeConfig]:
        return [n for n in self.nodes.values() if n.imaging]

    def scratch_root(self, node: str) -> Path:
        n = self.node(node)
        return n.scratch_root if n.scratch_root is not None else self.paths.scratch_root / n.name

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.paths.products_root / 'contimg.sqlite'}"

    @property
    def local(self) -> bool:
        """True when no broker is configured: run with a private Redis."""
        return not self.broker.url

    def with_broker(self, url: str) -> Config:
        """A copy that uses ``url`` as broker (for the private local Redis)."""
        new = dataclasses.replace(self, broker=dataclasses.replace(self.broker, url=url))
        new.source = dict(self.source, **{"broker.url": "local"})
        return new


RUN_SECTIONS = ("pipeline", "imaging", "flagging", "calibration", "survey")
"""Sections a single run may change (``contimg rerun --config``); the others are the site's."""
SITE_KEYS = ("flagging.aoflagger_strategy",)
"""Keys of those sections that stay the site's: a program file the nodes run (a run's messages never name one)."""


def run_overlay(base: Config, path: str | os.PathLike) -> tuple[Config, dict[str, Any]]:
    """``base`` with the keys of a TOML file laid over it, for one run.

    The file holds only what changes (``[imaging] robust = 0.5``). Returns the
    run's configuration and the changed keys (dotted key -> JSON value), which
    travel with the run's tasks. Keys outside :data:`RUN_SECTIONS` that differ
    from ``base`` are refused: the roots, broker, database and node map belong
    to the site, not to one run.
    """
    import copy

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; give a TOML file with the keys to change")
    try:
        raw = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {file} is not valid TOML: {e}") from None
    new = copy.deepcopy(base)
    _apply_mapping(new, raw, origin=f"run:{file}", base_dir=file.parent.resolve())
    validate(new)
    changed: dict[str, Any] = {}
    for sec, values in raw.items():
        if sec == "nodes":
            if raw["nodes"] and _jsonable(new.nodes) != _jsonable(base.nodes):
                raise ConfigError(f"nodes: the node map cannot change for one run ({file}); "
                                  "use `submit --remap` or edit the site configuration")
            continue
        for key in values:
            a, b = getattr(getattr(base, sec), key), getattr(getattr(new, sec), key)
            if _jsonable(a) == _jsonable(b):
                continue
            if f"{sec}.{key}" in SITE_KEYS:
                raise ConfigError(f"{sec}.{key}: cannot change for one run (in {file}): it names a program file "
                                  "the nodes run; edit the site configuration instead")
            if sec not in RUN_SECTIONS:
                raise ConfigError(f"{sec}.{key}: cannot change for one run (only [{'], ['.join(RUN_SECTIONS)}] "
                                  f"can, in {file}); edit the site configuration instead")
            changed[f"{sec}.{key}"] = _jsonable(b)
    return new, changed


def with_overrides(cfg: Config, overrides: dict[str, Any] | None) -> Config:
    """``cfg`` with a run's changed keys (from :func:`run_overlay`) applied and validated."""
    if not overrides:
        return cfg
    import copy

    new = copy.deepcopy(cfg)
    for dotted, value in overrides.items():
        sec, key = dotted.split(".", 1)
        if sec not in RUN_SECTIONS:
            raise ConfigError(f"{dotted}: a run may not change [{sec}]")
        if dotted in SITE_KEYS:
            raise ConfigError(f"{dotted}: a run may not change it (the site's configuration names the file)")
        _set_field(new, sec, key, value, "run", Path.cwd())
    validate(new)
    return new


def _jsonable(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return {f.name: _jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def default_nodes() -> dict[str, NodeConfig]:
    """Two nodes standing for two machines: sb00-07 on node1 (which images), sb08-15 on node2."""
    return {
        "node1": NodeConfig(name="node1", subbands=list(range(0, 8)), imaging=True),
        "node2": NodeConfig(name="node2", subbands=list(range(8, 16)), imaging=False),
    }


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

_SECTIONS = {
    "paths": PathsConfig,
    "broker": BrokerConfig,
    "database": DatabaseConfig,
    "pipeline": PipelineConfig,
    "dispatch": DispatchConfig,
    "watch": WatchConfig,
    "imaging": ImagingConfig,
    "flagging": FlaggingConfig,
    "calibration": CalibrationConfig,
    "survey": SurveyConfig,
    "flower": FlowerConfig,
    "notify": NotifyConfig,
}
_NODE_KEYS = {"subbands", "imaging", "scratch_root"}


def find_config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    """The TOML file to read: explicit, ``$CONTIMG_CONFIG`` or ``./contimg.toml``."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass an existing TOML file to --config")
        return p.resolve()
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"CONTIMG_CONFIG={env} does not exist; unset it or point it at a TOML file")
        return p.resolve()
    p = Path(DEFAULT_FILE)
    return p.resolve() if p.is_file() else None


def load(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> Config:
    """Load and validate the effective configuration.

    Parameters
    ----------
    path : path, optional
        TOML file; see :func:`find_config_file` for the search when omitted.
    env : dict, optional
        Environment to read overrides from (default ``os.environ``).
    """
    env = dict(os.environ if env is None else env)
    file = find_config_file(path)
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {file} is not valid TOML: {e}") from None
    cfg = Config(file=file)
    _set_defaults_source(cfg)
    base_dir = file.parent if file else Path.cwd()
    _apply_mapping(cfg, raw, origin=f"file:{file}", base_dir=base_dir)
    _apply_env(cfg, env)
    if not cfg.nodes:
        cfg.nodes = default_nodes()
        for name in cfg.nodes:
            cfg.source[f"nodes.{name}"] = "default"
    _absolutize(cfg)
    validate(cfg)
    return cfg


def _set_defaults_source(cfg: Config) -> None:
    for sec in _SECTIONS:
        for f in dataclasses.fields(getattr(cfg, sec)):
            cfg.source[f"{sec}.{f.name}"] = "default"


def _apply_mapping(cfg: Config, raw: dict[str, Any], origin: str, base_dir: Path) -> None:
    for sec, values in raw.items():
        if sec == "nodes":
            if not isinstance(values, dict):
                raise ConfigError("nodes: expected a table of [nodes.NAME] tables")
            for name, nvals in values.items():
                if not isinstance(nvals, dict):
                    raise ConfigError(f"nodes.{name}: expected a table with subbands, imaging, scratch_root")
                for key, val in nvals.items():
                    _set_node(cfg, name, key, val, origin, base_dir)
            continue
        if sec not in _SECTIONS:
            raise ConfigError(f"{sec}: unknown section (known: {', '.join([*_SECTIONS, 'nodes'])})")
        if not isinstance(values, dict):
            raise ConfigError(f"{sec}: expected a table")
        for key, val in values.items():
            _set_field(cfg, sec, key, val, origin, base_dir)


def _apply_env(cfg: Config, env: dict[str, str]) -> None:
    for var, text in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        parts = var[len(ENV_PREFIX):].lower().split("__")
        origin = f"env:{var}"
        if parts[0] == "nodes" and len(parts) == 3:
            _set_node(cfg, parts[1], parts[2], _parse_env_value(text), origin, Path.cwd())
        elif len(parts) == 2:
            _set_field(cfg, parts[0], parts[1], _parse_env_value(text), origin, Path.cwd())
        else:
            raise ConfigError(f"{var}: expected CONTIMG_<SECTION>__<KEY> or CONTIMG_NODES__<NODE>__<KEY>")


def _parse_env_value(text: str) -> Any:
    """Environment values are TOML scalars or arrays when they parse, else strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(key: str, value: Any, ftype: Any, base_dir: Path) -> Any:
    t = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    t = str(t)
    if "list[str]" in t:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return list(value)
    if "list[Path]" in t:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of paths, got {value!r}")
        return [_path(v, base_dir) for v in value]
    if "Path" in t:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        return _path(value, base_dir)
    if t == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if t == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {t}")  # pragma: no cover


def _path(value: str, base_dir: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base_dir / p)


def _set_field(cfg: Config, sec: str, key: str, value: Any, origin: str, base_dir: Path) -> None:
    if sec not in _SECTIONS:
        raise ConfigError(f"{sec}.{key}: unknown section {sec!r}")
    obj = getattr(cfg, sec)
    fields = {f.name: f for f in dataclasses.fields(obj)}
    if key not in fields:
        raise ConfigError(f"{sec}.{key}: unknown key (known in [{sec}]: {', '.join(fields)})")
    setattr(obj, key, _coerce(f"{sec}.{key}", value, fields[key].type, base_dir))
    cfg.source[f"{sec}.{key}"] = origin


def _parse_subbands(key: str, value: Any) -> list[int]:
    """Subbands as a list of ints or a string like ``"0-7"`` or ``"0-3,8"``."""
    out: list[int] = []
    if isinstance(value, str):
        try:
            for part in value.split(","):
                part = part.strip()
                if "-" in part:
                    a, b = part.split("-")
                    out.extend(range(int(a), int(b) + 1))
                elif part:
                    out.append(int(part))
        except ValueError:
            raise ConfigError(f"{key}: expected subbands like [0, 1, 2] or \"0-7\", got {value!r}") from None
    elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        out = list(value)
    else:
        raise ConfigError(f"{key}: expected subbands like [0, 1, 2] or \"0-7\", got {value!r}")
    return out


def _set_node(cfg: Config, name: str, key: str, value: Any, origin: str, base_dir: Path) -> None:
    if key not in _NODE_KEYS:
        raise ConfigError(f"nodes.{name}.{key}: unknown key (known: {', '.join(sorted(_NODE_KEYS))})")
    node = cfg.nodes.setdefault(name, NodeConfig(name=name, subbands=[]))
    full = f"nodes.{name}.{key}"
    if key == "subbands":
        node.subbands = _parse_subbands(full, value)
    elif key == "imaging":
        node.imaging = _coerce(full, value, "bool", base_dir)
    else:
        node.scratch_root = _coerce(full, value, "Path", base_dir)
    cfg.source[full] = origin


def _absolutize(cfg: Config) -> None:
    p = cfg.paths
    p.data_root = p.data_root.absolute()
    p.products_root = p.products_root.absolute()
    p.archive_root = p.archive_root.absolute()
    p.scratch_root = p.scratch_root.absolute()
    p.allowed_roots = [r.absolute() for r in p.allowed_roots]
    for n in cfg.nodes.values():
        if n.scratch_root is not None:
            n.scratch_root = n.scratch_root.absolute()


def validate(cfg: Config) -> None:
    """Reject an inconsistent configuration; the message names the key."""
    seen: dict[int, str] = {}
    for name, n in cfg.nodes.items():
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"nodes.{name}: a node name may hold letters, digits, - and _ only")
        if not n.subbands and not n.imaging:
            raise ConfigError(f"nodes.{name}.subbands: a node must hold subbands or image")
        for sb in n.subbands:
            if not 0 <= sb < N_SUBBANDS:
                raise ConfigError(f"nodes.{name}.subbands: subband {sb} is outside 0..{N_SUBBANDS - 1}")
            if sb in seen:
                raise ConfigError(f"nodes.{name}.subbands: subband {sb} is also on node {seen[sb]}")
            seen[sb] = name
    missing = sorted(set(range(N_SUBBANDS)) - set(seen))
    if missing:
        raise ConfigError(f"nodes: subbands {missing} are on no node; assign each of 0..15 to one node")
    if not cfg.imaging_nodes():
        raise ConfigError("nodes: no node has imaging = true; name at least one imaging node")
    pl = cfg.pipeline
    if not 1 <= pl.min_subbands <= N_SUBBANDS:
        raise ConfigError(f"pipeline.min_subbands: {pl.min_subbands} is outside 1..{N_SUBBANDS}")
    if pl.block_tolerance_s <= 0 or pl.block_tolerance_s > 300:
        raise ConfigError(f"pipeline.block_tolerance_s: {pl.block_tolerance_s} must be in (0, 300] seconds")
    if pl.max_retries < 0:
        raise ConfigError("pipeline.max_retries: must be >= 0")
    if pl.converter not in CONVERTERS:
        raise ConfigError(f"pipeline.converter: {pl.converter!r} is not one of {', '.join(CONVERTERS)}")
    if pl.stage_set not in STAGE_SETS:
        raise ConfigError(f"pipeline.stage_set: {pl.stage_set!r} is not one of {', '.join(STAGE_SETS)}")
    if pl.noop_seconds < 0:
        raise ConfigError("pipeline.noop_seconds: must be >= 0")
    d = cfg.dispatch
    if d.max_inflight_per_node < 1:
        raise ConfigError("dispatch.max_inflight_per_node: must be >= 1")
    if d.max_attempts < 1:
        raise ConfigError("dispatch.max_attempts: must be >= 1")
    if d.lease_s <= cfg.broker.task_time_limit_s:
        raise ConfigError(
            f"dispatch.lease_s: {d.lease_s:g} s must exceed broker.task_time_limit_s "
            f"({cfg.broker.task_time_limit_s} s), or a block is handed out again while its task still runs"
        )
    if not 0 < d.poll_s <= 60:
        raise ConfigError("dispatch.poll_s: must be in (0, 60] seconds")
    if d.node_check_s < 0:
        raise ConfigError("dispatch.node_check_s: must be >= 0 (0 turns the check off)")
    b = cfg.broker
    if b.url and not b.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"broker.url: {b.url!r} is not a redis:// URL")
    if b.task_time_limit_s <= 0:
        raise ConfigError("broker.task_time_limit_s: must be > 0")
    if b.worker_max_memory_mb < 256:
        raise ConfigError("broker.worker_max_memory_mb: must be >= 256 (MB); CASA alone needs more")
    if b.visibility_timeout_s <= b.task_time_limit_s:
        raise ConfigError(
            f"broker.visibility_timeout_s: {b.visibility_timeout_s} s must exceed broker.task_time_limit_s "
            f"({b.task_time_limit_s} s), or long tasks are redelivered while running"
        )
    if b.result_expires_s < b.visibility_timeout_s:
        raise ConfigError("broker.result_expires_s: must be at least broker.visibility_timeout_s (chord counters)")
    if cfg.database.url:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(cfg.database.url)
        except ArgumentError:
            raise ConfigError(f"database.url: {cfg.database.url!r} is not an SQLAlchemy URL") from None
    im = cfg.imaging
    if im.weighting not in ("natural", "uniform", "briggs"):
        raise ConfigError(f"imaging.weighting: {im.weighting!r} is not natural, uniform or briggs")
    if im.niter < 1:
        raise ConfigError("imaging.niter: must be >= 1 (the pipeline cleans, it does not stop at a dirty image)")
    if not 0 < im.pb_limit < 1:
        raise ConfigError("imaging.pb_limit: must be between 0 and 1")
    if im.imsize < 0 or im.imsize > 16384 or im.max_imsize < 64:
        raise ConfigError("imaging.imsize: must be 0 (automatic) or up to 16384; max_imsize >= 64")
    fl = cfg.flagging
    if fl.strategy not in FLAGGING_STRATEGIES:
        raise ConfigError(f"flagging.strategy: {fl.strategy!r} is not one of {', '.join(FLAGGING_STRATEGIES)}")
    if fl.aoflagger_strategy and not Path(fl.aoflagger_strategy).expanduser().is_file():
        raise ConfigError(f"flagging.aoflagger_strategy: {fl.aoflagger_strategy} is not a file; give the path of a "
                          "Lua strategy, or leave it empty for contimg's own")
    if fl.sumthreshold_threshold <= 0 or not 0 <= fl.sumthreshold_sir_eta < 1:
        raise ConfigError("flagging.sumthreshold_threshold must be > 0 (sigma) and sumthreshold_sir_eta in [0, 1)")
    if fl.threads < 0:
        raise ConfigError("flagging.threads: must be >= 0 (0: every core this process may use)")
    if fl.auto_outlier_factor <= 1:
        raise ConfigError("flagging.auto_outlier_factor: must be > 1 (a ratio to the array median)")
    for entry in fl.bad_antennas:
        if not entry.strip() or entry.count(":") > 1:
            raise ConfigError(f"flagging.bad_antennas: {entry!r} is not NAME or YYYY-MM-DD:NAME")
    ca = cfg.calibration
    if ca.without_calibration not in WITHOUT_CALIBRATION:
        raise ConfigError(
            f"calibration.without_calibration: {ca.without_calibration!r} is not one of {', '.join(WITHOUT_CALIBRATION)}"
        )
    if not 0 < ca.max_offset_deg <= 10:
        raise ConfigError("calibration.max_offset_deg: must be in (0, 10] degrees")
    if ca.validity_window_s <= 0 or ca.min_apparent_jy <= 0 or ca.minsnr < 0:
        raise ConfigError("calibration: validity_window_s and min_apparent_jy must be > 0, minsnr >= 0")
    if im.backend not in IMAGING_BACKENDS:
        raise ConfigError(f"imaging.backend: {im.backend!r} is not one of {', '.join(IMAGING_BACKENDS)}")
    if not 0 < im.wsclean_mgain <= 1:
        raise ConfigError("imaging.wsclean_mgain: must be in (0, 1] (a fraction of the peak residual)")
    if not 1e-6 <= im.wgridder_accuracy <= 1e-2:
        raise ConfigError(f"imaging.wgridder_accuracy: {im.wgridder_accuracy} must be in [1e-6, 1e-2] "
                          "(a relative error of the gridded image; WSClean's default is 1e-4)")
    if im.primary_beam not in ("drift", "tracking"):
        raise ConfigError(f"imaging.primary_beam: {im.primary_beam!r} is not drift or tracking")
    if not 0 <= im.max_time_smearing < 0.5:
        raise ConfigError("imaging.max_time_smearing: must be >= 0 and < 0.5 (a fractional peak loss)")
    if not 0 <= im.max_bandwidth_smearing < 0.5:
        raise ConfigError("imaging.max_bandwidth_smearing: must be >= 0 and < 0.5 (a fractional peak loss)")
    validate_survey(cfg.survey)
    validate_watch(cfg.watch)
    fl = cfg.flower
    if not 0 < fl.port < 65536:
        raise ConfigError(f"flower.port: {fl.port} is not a TCP port")
    if fl.basic_auth and any(":" not in pair or not pair.split(":", 1)[1] for pair in fl.basic_auth.split(",")):
        raise ConfigError("flower.basic_auth: give user:password (several separated by commas)")
    if fl.address not in ("127.0.0.1", "localhost", "::1") and not fl.basic_auth:
        raise ConfigError(f"flower.address: {fl.address} is reachable from other machines; set flower.basic_auth "
                          "(user:password) or listen on 127.0.0.1")
    validate_notify(cfg.notify)
    validate_archive(cfg.archive)


_EMAIL = re.compile(r"[^@\s<>,;:\"]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _check_address(key: str, text: str) -> None:
    from email.utils import getaddresses

    addrs = getaddresses([text])
    if "\n" in text or "\r" in text or len(addrs) != 1 or not _EMAIL.fullmatch(addrs[0][1]):
        raise ConfigError(f"{key}: {text!r} is not an email address like ops@example.org or "
                          "\"Night Shift <night@example.org>\"")


def _check_http_url(key: str, url: str) -> None:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        # the URL itself may hold a token: name only its scheme
        raise ConfigError(f"{key}: expected an http:// or https:// URL with a host, got scheme {u.scheme or 'none'!r}")


def validate_notify(nt: NotifyConfig) -> None:
    """Reject inconsistent [notify] values; the message names the key."""
    for ev in nt.on:
        if ev not in NOTIFY_EVENTS:
            raise ConfigError(f"notify.on: {ev!r} is not one of {', '.join(NOTIFY_EVENTS)}")
    if not 0 < nt.smtp_port < 65536:
        raise ConfigError(f"notify.smtp_port: {nt.smtp_port} is not a TCP port")
    for key in ("smtp_timeout_s", "webhook_timeout_s"):
        if not 0 < getattr(nt, key) <= 300:
            raise ConfigError(f"notify.{key}: {getattr(nt, key)} must be in (0, 300] seconds")
    if not 0 < nt.check_s <= 3600:
        raise ConfigError(f"notify.check_s: {nt.check_s} must be in (0, 3600] seconds")
    if nt.max_age_h <= 0:
        raise ConfigError(f"notify.max_age_h: {nt.max_age_h} must be > 0 hours")
    if any(c.isspace() or c == "/" for c in nt.smtp_host):
        raise ConfigError(f"notify.smtp_host: {nt.smtp_host!r} is not a host name (no scheme, no spaces)")
    for r in nt.recipients:
        _check_address("notify.recipients", r)
    if nt.smtp_host:
        _check_address("notify.sender", nt.sender)
        if not nt.recipients:
            raise ConfigError("notify.recipients: email is on (notify.smtp_host is set) but nobody would get it; "
                              "give a list of addresses")
    if nt.smtp_password and not nt.smtp_user:
        raise ConfigError("notify.smtp_user: a password is set without a user")
    if nt.smtp_host and nt.smtp_user and not nt.smtp_starttls and nt.smtp_host not in _LOOPBACK:
        raise ConfigError(f"notify.smtp_starttls: logging in to {nt.smtp_host} without TLS would send the password "
                          "in clear; set notify.smtp_starttls = true")
    if nt.webhook_url:
        _check_http_url("notify.webhook_url", nt.webhook_url)
    if nt.weblog_base_url:
        _check_http_url("notify.weblog_base_url", nt.weblog_base_url)


def validate_survey(sv: SurveyConfig) -> None:
    """Reject inconsistent [survey] values; the message names the key."""
    for key in ("match_radius_beams", "edge_beams", "blend_beams", "reference_clip_sigma"):
        if not 0 < getattr(sv, key) <= 100:
            raise ConfigError(f"survey.{key}: {getattr(sv, key)} must be in (0, 100] (beams or sigma)")
    if sv.match_radius_beams > 2:
        raise ConfigError(f"survey.match_radius_beams: {sv.match_radius_beams} beams would merge distinct sources; "
                          "use at most 2 (default 0.5)")
    if not 0 < sv.min_pb < 1:
        raise ConfigError(f"survey.min_pb: {sv.min_pb} must be between 0 and 1 (a primary-beam response)")
    if sv.catalogue_min_snr < 3 or sv.reference_min_snr < sv.catalogue_min_snr:
        raise ConfigError("survey.catalogue_min_snr must be >= 3 and survey.reference_min_snr >= it "
                          f"(have {sv.catalogue_min_snr} and {sv.reference_min_snr})")
    if sv.reference_min_block_snr < 0:
        raise ConfigError("survey.reference_min_block_snr: must be >= 0")
    if sv.min_references < 1:
        raise ConfigError("survey.min_references: must be >= 1")
    if not 0 < sv.ese_fpr < 1:
        raise ConfigError(f"survey.ese_fpr: {sv.ese_fpr} is not a probability; give e.g. 1e-4")


def validate_watch(w: WatchConfig) -> None:
    """Reject inconsistent [watch] values; the message names the key."""
    if not 0 < w.settle_s <= 3600:
        raise ConfigError(f"watch.settle_s: {w.settle_s} must be in (0, 3600] seconds")
    if not w.settle_s < w.block_timeout_s <= 7 * 86400:
        raise ConfigError(f"watch.block_timeout_s: {w.block_timeout_s} must exceed watch.settle_s ({w.settle_s}) "
                          "and be at most a week; a block waits this long for its missing subbands")
    if not 0 < w.poll_s <= 3600:
        raise ConfigError(f"watch.poll_s: {w.poll_s} must be in (0, 3600] seconds")
    if w.use_inotify not in WATCH_INOTIFY:
        raise ConfigError(f"watch.use_inotify: {w.use_inotify!r} is not one of {', '.join(WATCH_INOTIFY)} "
                          "(write it as a string in TOML: \"off\")")


# ---------------------------------------------------------------------------
# showing and writing
# ---------------------------------------------------------------------------


def flatten(cfg: Config) -> dict[str, Any]:
    """Dotted key -> JSON-friendly value."""
    out: dict[str, Any] = {}
    for sec in _SECTIONS:
        for f in dataclasses.fields(getattr(cfg, sec)):
            out[f"{sec}.{f.name}"] = _jsonable(getattr(getattr(cfg, sec), f.name))
    for name, n in cfg.nodes.items():
        out[f"nodes.{name}.subbands"] = list(n.subbands)
        out[f"nodes.{name}.imaging"] = n.imaging
        out[f"nodes.{name}.scratch_root"] = str(cfg.scratch_root(name))
    out["database.effective_url"] = cfg.database_url
    return out


def source_of(cfg: Config, key: str) -> str:
    if key in cfg.source:
        return cfg.source[key]
    if key.startswith("nodes."):
        name = key.split(".")[1]
        if key.endswith("scratch_root") and f"nodes.{name}.scratch_root" not in cfg.source:
            return "derived from paths.scratch_root"
        return cfg.source.get(f"nodes.{name}", "default")
    return "derived"


def to_toml(cfg: Config) -> str:
    """Serialise the effective configuration as TOML (workers read it back)."""
    lines: list[str] = []
    for sec in _SECTIONS:
        lines.append(f"[{sec}]")
        for f in dataclasses.fields(getattr(cfg, sec)):
            lines.append(f"{f.name} = {_toml_value(getattr(getattr(cfg, sec), f.name))}")
        lines.append("")
    for name, n in cfg.nodes.items():
        lines.append(f"[nodes.{name}]")
        lines.append(f"subbands = {_toml_value(n.subbands)}")
        lines.append(f"imaging = {_toml_value(n.imaging)}")
        lines.append(f"scratch_root = {_toml_value(cfg.scratch_root(name))}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Path):
        return json.dumps(str(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def write(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the effective configuration atomically; returns the path."""
    from .products import temporary_name

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.write_text(to_toml(cfg))
    os.replace(tmp, path)
    return path


@functools.lru_cache(maxsize=64)
def _resolved_roots(roots: tuple[str, ...]) -> tuple[Path, ...]:
    """The roots, resolved once per process (every task checks its paths against them)."""
    return tuple(Path(r).resolve() for r in roots)


def check_path_in_roots(cfg: Config, path: str | os.PathLike, what: str = "path") -> Path:
    """Resolve ``path`` and require it to lie under a configured root.

    Paths that arrive in broker messages are checked against the data,
    products, archive and scratch roots (and ``paths.allowed_roots``) so a
    forged message cannot make a worker read or write elsewhere.
    """
    p = Path(path).resolve()
    roots = [cfg.paths.data_root, cfg.paths.products_root, cfg.paths.archive_root, cfg.paths.scratch_root]
    roots += [cfg.scratch_root(n) for n in cfg.nodes] + list(cfg.paths.allowed_roots)
    for r in _resolved_roots(tuple(str(r) for r in roots)):
        if p.is_relative_to(r):
            return p
    from .errors import PermanentError

    raise PermanentError(f"{what} {p} is outside the configured roots; add its root to paths.allowed_roots")


# ---------------------------------------------------------------------------
# [archive]: ingest into paths.archive_root and cleanup of runs' working directories
# ---------------------------------------------------------------------------


@dataclass
class ArchiveConfig:
    """Ingest and cleanup of runs (``contimg ingest``, ``contimg cleanup``; contimg/archive.py, docs/operations.md)."""

    expire_days: float = 30.0
    """``contimg cleanup --expired`` deletes the working directory of a run submitted longer ago than this
    (days), and only when the archive holds every product of the run (checked by checksum)."""


_SECTIONS["archive"] = ArchiveConfig


def validate_archive(ar: ArchiveConfig) -> None:
    """Reject inconsistent [archive] values; the message names the key."""
    if not 0 < ar.expire_days <= 36500:
        raise ConfigError(f"archive.expire_days: {ar.expire_days} must be in (0, 36500] days")
