"""`launch slurm|pbs --time`: read once into seconds, written for each scheduler so it cannot be misread.

Accepted forms (every field a whole number):

    M             minutes                         90         -> 1 h 30 min
    H:MM          hours:minutes                   24:00      -> 24 h
    H:MM:SS       hours:minutes:seconds           2:30:00    -> 2 h 30 min
    D-H           days-hours                      4-12       -> 4 days 12 h
    D-H:MM        days-hours:minutes              1-06:30    -> 30 h 30 min
    D-H:MM:SS     days-hours:minutes:seconds      1-06:30:15

A two-field value is hours:minutes for SLURM and PBS alike. SLURM and PBS would each read a bare
`24:00` as minutes:seconds (24 minutes), which is never what a job array of training runs wants,
and hpsearch has always meant hours:minutes by it; write `0:45:00` for 45 minutes. The rendered
directives leave nothing to read: SLURM gets `--time=D-HH:MM:SS`, PBS `walltime=HH:MM:SS` (hours
past 24 as they are).
"""

from __future__ import annotations

import re

from hpsearch.errors import HpsearchError

FORMS = "minutes (90), H:MM (hours:minutes), H:MM:SS, D-H, D-H:MM or D-H:MM:SS"
MAX_DAYS = 365  # a typo guard: no scheduler grants a year, and a bigger number is a slip of the finger
_FIELD = r"\d{1,7}"
_FORMS = [
    re.compile(rf"(?P<m>{_FIELD})"),
    re.compile(rf"(?P<h>{_FIELD}):(?P<m>\d{{2}})(?::(?P<s>\d{{2}}))?"),
    re.compile(rf"(?P<d>{_FIELD})-(?P<h>\d{{1,2}})(?::(?P<m>\d{{2}})(?::(?P<s>\d{{2}}))?)?"),
]


def parse(value: object) -> int:
    """Seconds of a --time value; a bad one is one line naming the accepted forms."""
    text = str(value).strip()
    match = next((m for m in (f.fullmatch(text) for f in _FORMS) if m), None)
    if match is None:
        raise HpsearchError(f"--time must be {FORMS}, but got time={value!r}")
    d, h, m, s = (int(match.groupdict().get(k) or 0) for k in "dhms")
    if match.groupdict().get("h") is not None and (m > 59 or s > 59):
        raise HpsearchError(f"--time must have minutes and seconds below 60, but got time={value!r}")
    if match.groupdict().get("d") is not None and h > 23:
        raise HpsearchError(f"--time must have hours below 24 after a day count (D-H), but got time={value!r}")
    seconds = ((d * 24 + h) * 60 + m) * 60 + s
    if seconds <= 0:
        raise HpsearchError(f"--time must be longer than 0, but got time={value!r}")
    if seconds > MAX_DAYS * 86400:
        raise HpsearchError(f"--time must be at most {MAX_DAYS} days, but got time={value!r}")
    return seconds


def slurm(seconds: int) -> str:
    """SLURM's days-hours:minutes:seconds, the one form it reads only one way."""
    days, rest = divmod(int(seconds), 86400)
    return f"{days}-{_hms(rest)}"


def pbs(seconds: int) -> str:
    """PBS walltime hours:minutes:seconds."""
    return _hms(int(seconds))


def _hms(seconds: int) -> str:
    minutes, s = divmod(seconds, 60)
    h, m = divmod(minutes, 60)
    return f"{h:02d}:{m:02d}:{s:02d}"
