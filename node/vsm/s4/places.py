"""Places named in requests: IANA time zone names and city names → time zones.

The city table is the time zone database's own city names (`Asia/Tokyo` → "tokyo") plus a
few large cities it does not name; built at the first request that needs it.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass

# Large cities whose zone is named after another city.
EXTRA_CITIES = {
    "san francisco": "America/Los_Angeles",
    "seattle": "America/Los_Angeles",
    "boston": "America/New_York",
    "washington": "America/New_York",
    "miami": "America/New_York",
    "beijing": "Asia/Shanghai",
    "delhi": "Asia/Kolkata",
    "new delhi": "Asia/Kolkata",
    "mumbai": "Asia/Kolkata",
    "bangalore": "Asia/Kolkata",
    "osaka": "Asia/Tokyo",
    "kyoto": "Asia/Tokyo",
    "munich": "Europe/Berlin",
    "hamburg": "Europe/Berlin",
    "frankfurt": "Europe/Berlin",
    "milan": "Europe/Rome",
    "barcelona": "Europe/Madrid",
    "geneva": "Europe/Zurich",
    "manchester": "Europe/London",
    "edinburgh": "Europe/London",
    "st petersburg": "Europe/Moscow",
    "rio de janeiro": "America/Sao_Paulo",
    "montreal": "America/Toronto",
    "melbourne": "Australia/Melbourne",
}
IANA_NAME = re.compile(r"\b(?:[A-Z][A-Za-z_\-]+/)+[A-Z][A-Za-z_\-]+\b|\bUTC\b")


@dataclass(frozen=True, slots=True)
class Place:
    start: int
    end: int
    text: str  # as written
    timezone: str


@functools.cache
def _zones() -> frozenset[str]:
    # available_timezones() walks the tz database's files at each call: once is enough.
    return frozenset(zoneinfo.available_timezones())


@functools.cache
def _cities() -> tuple[dict[str, str], re.Pattern[str]]:
    cities: dict[str, str] = {}
    for name in sorted(_zones()):
        if "/" not in name or name.startswith(("Etc/", "SystemV/", "US/")):
            continue
        city = name.rsplit("/", 1)[1].replace("_", " ").lower()
        cities.setdefault(city, name)
    cities.update(EXTRA_CITIES)
    # Longest first, so "new york" wins over "york".
    names = sorted(cities, key=len, reverse=True)
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b", re.I)
    return cities, pattern


def find_places(text: str) -> list[Place]:
    """Time zone names and known cities in `text`, in order of appearance."""
    found = []
    for m in IANA_NAME.finditer(text):
        name = m.group(0)
        if name == "UTC" or name in _zones():
            found.append(Place(m.start(), m.end(), name, name))
    cities, pattern = _cities()
    for m in pattern.finditer(text):
        if any(p.start <= m.start() < p.end for p in found):
            continue
        word = m.group(0)
        # A lower-case common word that is also a city ("nice", "split"): not a place.
        if word.islower() and len(word.split()) == 1 and word in _AMBIGUOUS:
            continue
        found.append(Place(m.start(), m.end(), word, cities[word.lower()]))
    return sorted(found, key=lambda p: p.start)


_AMBIGUOUS = frozenset({"nice", "split", "male", "march", "mayotte", "eucla", "time", "of"})
