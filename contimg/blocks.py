"""Block discovery: group subband files into observation blocks.

The 16 files of a block do not share one timestamp (correlator nodes start up
to about ±60 s apart), so files are clustered by start time: sorted by time, a
new block begins wherever the gap to the previous file exceeds the tolerance.
Blocks are ~309 s apart, so with ±60 s jitter the gap between blocks is at
least ~130 s while files of one block lie within a few tens of seconds of each
other. A block's id is the timestamp of its earliest file
(:mod:`contimg.products`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from .products import format_timestamp, parse_subband_filename
from .telescope import BLOCK_DURATION_S, N_SUBBANDS


@dataclass(frozen=True)
class SubbandFile:
    """One raw subband file found on disk."""

    path: Path
    timestamp: datetime
    subband: int
    size: int


@dataclass
class Block:
    """One observation block: up to 16 subband files."""

    block_id: str
    files: dict[int, SubbandFile]
    """The file chosen for each subband present."""
    duplicates: dict[int, list[SubbandFile]] = field(default_factory=dict)
    """Subbands seen more than once: the files NOT chosen."""

    @property
    def start(self) -> datetime:
        return min(f.timestamp for f in self.files.values())

    @property
    def missing(self) -> list[int]:
        return [sb for sb in range(N_SUBBANDS) if sb not in self.files]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def mid_time(self) -> datetime:
        """Nominal mid-time: median start of its files plus half a block."""
        starts = sorted(f.timestamp.timestamp() for f in self.files.values())
        med = statistics.median(starts)
        return datetime.fromtimestamp(med, tz=self.start.tzinfo) + timedelta(seconds=BLOCK_DURATION_S / 2)

    @property
    def mid_jd(self) -> float:
        return self.mid_time.timestamp() / 86400.0 + 2440587.5

    def pointing_dec_deg(self) -> float | None:
        """The pointing declination from the first readable file's header (h5py only, no CASA)."""
        import h5py
        import numpy as np

        for f in self.files.values():
            try:
                with h5py.File(f.path, "r") as h:
                    return float(np.degrees(h["Header/extra_keywords/phase_center_dec"][()]))
            except (OSError, KeyError, ValueError):
                continue
        return None

    def as_dict(self) -> dict:
        return {
            "block_id": self.block_id,
            "start": format_timestamp(self.start),
            "mid_jd": self.mid_jd,
            "n_subbands": len(self.files),
            "subbands": {f"sb{sb:02d}": str(f.path) for sb, f in sorted(self.files.items())},
            "missing": self.missing,
            "duplicates": {f"sb{sb:02d}": [str(x.path) for x in xs] for sb, xs in sorted(self.duplicates.items())},
        }


@dataclass
class Discovery:
    """What a directory holds."""

    directory: Path
    blocks: list[Block]
    stray: list[Path]
    """Files that are not subband files (or are temporary/partial files)."""

    def as_dict(self) -> dict:
        return {
            "directory": str(self.directory),
            "n_blocks": len(self.blocks),
            "blocks": [b.as_dict() for b in self.blocks],
            "stray": [str(p) for p in self.stray],
        }

    def block(self, block_id: str) -> Block:
        for b in self.blocks:
            if b.block_id == block_id:
                return b
        raise KeyError(f"block {block_id} is not in {self.directory}; list the blocks with `contimg blocks {self.directory}`")


def scan(directory: str | Path, recursive: bool = False) -> tuple[list[SubbandFile], list[Path]]:
    """Subband files and stray files in ``directory``.

    Raises FileNotFoundError / NotADirectoryError naming the path.
    """
    d = Path(directory)
    if not d.exists():
        raise FileNotFoundError(f"data directory {d} does not exist; check the path or paths.data_root")
    if not d.is_dir():
        raise NotADirectoryError(f"{d} is not a directory; give the directory that holds the *_sbNN.hdf5 files")
    files: list[SubbandFile] = []
    stray: list[Path] = []
    entries = d.rglob("*") if recursive else d.iterdir()
    for p in sorted(entries):
        if not p.is_file():
            continue
        name = parse_subband_filename(p.name)
        if name is None or name.subband >= N_SUBBANDS:
            stray.append(p)
            continue
        files.append(SubbandFile(p, name.timestamp, name.subband, p.stat().st_size))
    return files, stray


def cluster(files: list[SubbandFile], tolerance_s: float = 60.0) -> list[Block]:
    """Group subband files into blocks by start time (gap > tolerance starts a block)."""
    groups: list[list[SubbandFile]] = []
    for f in sorted(files, key=lambda f: (f.timestamp, f.subband)):
        if groups and (f.timestamp - groups[-1][-1].timestamp).total_seconds() <= tolerance_s:
            groups[-1].append(f)
        else:
            groups.append([f])
    return [_make_block(g) for g in groups]


def _make_block(group: list[SubbandFile]) -> Block:
    med = statistics.median(f.timestamp.timestamp() for f in group)
    by_sb: dict[int, list[SubbandFile]] = {}
    for f in group:
        by_sb.setdefault(f.subband, []).append(f)
    chosen: dict[int, SubbandFile] = {}
    dups: dict[int, list[SubbandFile]] = {}
    for sb, fs in by_sb.items():
        # Keep the copy nearest the block's median start; a larger file wins a tie
        # (a re-transfer that completed beats one that was cut short).
        fs = sorted(fs, key=lambda f: (abs(f.timestamp.timestamp() - med), -f.size, str(f.path)))
        chosen[sb] = fs[0]
        if len(fs) > 1:
            dups[sb] = fs[1:]
    start = min(f.timestamp for f in chosen.values())
    return Block(block_id=format_timestamp(start), files=dict(sorted(chosen.items())), duplicates=dups)


def discover(directory: str | Path, tolerance_s: float = 60.0, recursive: bool = False) -> Discovery:
    """Find the blocks in ``directory``."""
    files, stray = scan(directory, recursive=recursive)
    return Discovery(Path(directory), cluster(files, tolerance_s), stray)
