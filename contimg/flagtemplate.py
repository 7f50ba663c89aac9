"""Flag templates: an analyst's extra flags for a rerun, in CASA flagdata list syntax.

One command per line, ``key=value`` pairs separated by spaces; values quoted
with ``'`` or ``"`` (or bare numbers and booleans); ``#`` starts a comment::

    # DSA-017 had a bad LNA on this night
    mode='manual' antenna='DSA-017'
    mode='manual' spw='0:0~5' reason='band edge'
    mode='manual' timerange='2025/10/05/03:01:00~2025/10/05/03:02:30'
    mode='clip' clipminmax=[0.0, 50.0] datacolumn='DATA'

The file is checked before a rerun is submitted, so a typo fails at once with
the line named, not an hour later inside a worker. It is applied in the
per-subband step after the standard flagging, with one
``casatasks.flagdata(mode='list', inpfile=...)`` call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ContimgError

MODES = {"manual", "clip", "quack", "shadow", "elevation", "tfcrop", "rflag", "extend", "unflag"}
"""flagdata modes a template may use (``summary`` and ``list`` make no sense in one)."""

KEYS = {
    "mode", "antenna", "spw", "timerange", "correlation", "scan", "field", "uvrange", "observation", "intent",
    "array", "feed", "reason", "autocorr", "clipminmax", "clipoutside", "clipzeros", "datacolumn", "channelavg",
    "chanbin", "timeavg", "timebin", "quackinterval", "quackmode", "quackincrement", "tolerance", "addantenna",
    "lowerlimit", "upperlimit", "ntime", "combinescans", "timecutoff", "freqcutoff", "timefit", "freqfit",
    "maxnpieces", "flagdimension", "usewindowstats", "halfwin", "extendflags", "winsize", "timedev", "freqdev",
    "timedevscale", "freqdevscale", "spectralmax", "spectralmin", "growtime", "growfreq", "growaround",
    "flagneartime", "flagnearfreq", "extendpols",
}
"""flagdata parameters a template line may set."""

_PAIR = re.compile(r"""\s*([A-Za-z_]\w*)\s*=\s*('[^']*'|"[^"]*"|\[[^\]]*\]|[^\s'"\[\]]+)""")


class FlagTemplateError(ContimgError):
    """A flag template that CASA's flagdata would not accept."""


@dataclass(frozen=True)
class FlagCommand:
    line: int
    text: str
    params: dict[str, str]


def parse(text: str, name: str = "flag template") -> list[FlagCommand]:
    """The commands of a template; :class:`FlagTemplateError` names the first bad line."""
    commands = []
    for no, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        params: dict[str, str] = {}
        pos = 0
        while pos < len(line):
            m = _PAIR.match(line, pos)
            if m is None:
                raise FlagTemplateError(f"{name} line {no}: expected key='value' pairs, cannot read "
                                        f"{line[pos:].strip()[:40]!r}; fix the line (CASA flagdata list syntax)")
            key, value = m.group(1), m.group(2)
            if key not in KEYS:
                raise FlagTemplateError(f"{name} line {no}: {key!r} is not a flagdata parameter; fix the line")
            if key in params:
                raise FlagTemplateError(f"{name} line {no}: {key!r} is given twice; fix the line")
            params[key] = value
            pos = m.end()
        mode = params.get("mode", "'manual'").strip("'\"")
        if mode not in MODES:
            raise FlagTemplateError(f"{name} line {no}: mode {mode!r} is not one of {', '.join(sorted(MODES))}")
        if mode == "manual" and set(params) <= {"mode", "reason"}:
            raise FlagTemplateError(f"{name} line {no}: a manual flag with no selection would flag everything; "
                                    "give antenna, spw, timerange, ... or remove the line")
        commands.append(FlagCommand(no, line, params))
    if not commands:
        raise FlagTemplateError(f"{name}: no flag command in it; give one command per line or leave --flags out")
    return commands


def _strip_comment(line: str) -> str:
    """The line up to a ``#`` that is not inside a quoted value."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def check_file(path: str | Path) -> list[FlagCommand]:
    """Parse a template file; a missing or unreadable file is a one-line error naming it."""
    p = Path(path)
    if not p.is_file():
        raise FlagTemplateError(f"flag template {p} does not exist; give the path of a CASA flagdata list file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FlagTemplateError(f"flag template {p} cannot be read ({e}); give a text file") from None
    return parse(text, name=str(p))


def apply(ms: str | Path, template: str | Path) -> dict:
    """Apply a (checked) template to a subband MS with one flagdata call; returns what it did."""
    from . import casa_env

    from .errors import PermanentError

    commands = check_file(template)
    try:
        casa_env.casatasks().flagdata(vis=str(ms), mode="list", inpfile=str(template), flagbackup=False,
                                      action="apply")
    except RuntimeError as e:
        if "NullSelection" in str(e):  # e.g. an antenna name that is not in this array
            raise PermanentError(f"flag template {template}: a command selects no data in {Path(ms).name} "
                                 "(an antenna, spw or time range not in it?); fix the template and rerun") from None
        raise
    return {"template": str(template), "n_commands": len(commands)}
