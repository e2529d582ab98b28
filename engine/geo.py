"""IP geolocation: an address's country (and region where the data has it) from a MaxMind DB file.

Owns opening and checking `.mmdb` databases (the standard MaxMind DB format, read with the
`maxminddb` package's C extension), turning whatever record a database holds into a `Location`,
skipping addresses that are not public, the per-database answer cache, and the embedded offline
default (`engine/data/geo/`, whose README gives its source, version and licence).

Record layouts understood (anything else, or anything malformed, is "unknown", never an error):

- GeoIP2 / GeoLite2 Country and City: `country.iso_code`, else `registered_country.iso_code`;
  region `subdivisions[0].iso_code` (e.g. "BE" for Berlin in DE, "13" for Tokyo in JP).
- Flat layouts (ip-location-db, DB-IP lite via ip-location-db, IPinfo): a top-level
  `country_code` (or `country`) string; region from a top-level `region_code` string if any.
  Region *names* (ip-location-db's `state1`) are not codes and are ignored.

Countries are upper-case ISO 3166-1 alpha-2 codes from `engine.iso.COUNTRIES` (as card countries
are); codes outside it ("EU", "AP", "ZZ", ...) count as unknown. Unknown is `''`.

Databases are memory-mapped: replace a file atomically (write elsewhere, then rename), never in
place. A `GeoDB` is safe to share between threads.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import gzip
import ipaddress
import logging
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

from engine.iso import COUNTRIES
from engine.validation import IPAddress

log = logging.getLogger("risk_engine.geo")

#: The embedded default: country level, IPv4 and IPv6, gzip-compressed (see its README.md).
DEFAULT_DB_PATH = Path(__file__).resolve().parent / "data" / "geo" / "geo-whois-asn-country.mmdb.gz"

#: Answers remembered per database, keyed by address; the cache is emptied when full (cheaper than
#: LRU bookkeeping on the miss path: benchmarks/geo_lookup.py). 0 disables it.
DEFAULT_CACHE_SIZE = 16_384


class GeoError(ValueError):
    """A geo database could not be opened or is not a valid MaxMind DB file."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where an address is: ISO 3166-1 alpha-2 country and the subdivision code; '' when unknown."""

    country: str
    region: str


UNKNOWN = Location("", "")

_IPV4 = ipaddress.IPv4Address


def _ranges(networks: str) -> tuple[list[int], list[int]]:
    """Sorted, merged (starts, ends) of the given CIDR networks, for bisect."""
    nets = list(ipaddress.collapse_addresses(ipaddress.ip_network(n) for n in networks.split()))  # type: ignore[type-var]
    return [int(n.network_address) for n in nets], [int(n.broadcast_address) for n in nets]


# IANA special-purpose and other non-public ranges: "this network", private, shared (CGNAT),
# loopback, link-local, protocol assignments, documentation, 6to4 relay, benchmarking,
# multicast, reserved and broadcast.
_V4_STARTS, _V4_ENDS = _ranges(
    """
    0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.0.0.0/24
    192.0.2.0/24 192.88.99.0/24 192.168.0.0/16 198.18.0.0/15 198.51.100.0/24 203.0.113.0/24
    224.0.0.0/4 240.0.0.0/4
    """
)
# IPv6 outside 2000::/3 (global unicast) is not public; inside it: IETF protocol assignments
# (Teredo among them), documentation (2001:db8::/32, 3fff::/20). 6to4 (2002::/16) and
# IPv4-mapped addresses are looked up by their embedded IPv4 address instead.
_V6_STARTS, _V6_ENDS = _ranges("2001::/23 2001:db8::/32 3fff::/20")
_V6_GLOBAL_PREFIX = 0b001  # 2000::/3


def _reserved_v4(value: int) -> bool:
    i = bisect.bisect_right(_V4_STARTS, value) - 1
    return i >= 0 and value <= _V4_ENDS[i]


def _reserved_v6(value: int) -> bool:
    if value >> 125 != _V6_GLOBAL_PREFIX:
        return True
    i = bisect.bisect_right(_V6_STARTS, value) - 1
    return i >= 0 and value <= _V6_ENDS[i]


_COUNTRY_CODES = {code: code for code in COUNTRIES} | {code.lower(): code for code in COUNTRIES}
_COUNTRY_ONLY = {code: Location(code, "") for code in COUNTRIES}
_LOCATIONS: dict[tuple[str, str], Location] = {}


def _country(value: Any) -> str | None:
    """The country code in `value` (a string or a GeoIP2 `{"iso_code": ...}` map), if valid."""
    if isinstance(value, dict):
        value = value.get("iso_code")
    return _COUNTRY_CODES.get(value) if isinstance(value, str) else None


def _location(record: Any) -> Location:
    """Turn one database record, whatever its shape, into an (interned) Location."""
    if not isinstance(record, dict):
        return UNKNOWN
    # Written out rather than `a or b or c`: this runs once per lookup that misses the cache.
    value = record.get("country")
    country = None if value is None else _country(value)
    if country is None:
        value = record.get("registered_country")
        country = None if value is None else _country(value)
        if country is None:
            value = record.get("country_code")
            country = _COUNTRY_CODES.get(value) if isinstance(value, str) else None
            if country is None:
                return UNKNOWN
    if "subdivisions" in record:
        region = record["subdivisions"]
        region = region[0] if isinstance(region, list) and region else None
        if isinstance(region, dict):
            region = region.get("iso_code")
    else:
        region = record.get("region_code")
    if not (isinstance(region, str) and 0 < len(region) <= 3 and region.isascii() and region.isalnum()):
        return _COUNTRY_ONLY[country]
    key = (country, region.upper())
    location = _LOCATIONS.get(key)
    if location is None:
        location = _LOCATIONS.setdefault(key, Location(*key))
    return location


class GeoDB:
    """An open MaxMind DB file: `lookup(addr)` gives the address's `Location`.

    Open with `GeoDB.open(path)`; a path ending in `.gz` is decompressed first (into a temporary
    file that is unlinked once mapped).
    """

    def __init__(self, reader: Any, path: Path, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._reader = reader
        self.path = path
        metadata = reader.metadata()
        self._ipv6 = metadata.ip_version == 6
        try:
            built = datetime.datetime.fromtimestamp(metadata.build_epoch, datetime.UTC).date().isoformat()
        except (TypeError, ValueError, OverflowError, OSError):
            built = "at an unknown date"
        #: For logs: the database type and its build date, e.g. "GeoLite2-City built 2026-06-17".
        self.description = f"{metadata.database_type} built {built}"
        self._failed = False
        self._cache_size = cache_size
        self._cache: dict[int, Location] | None = {} if cache_size > 0 else None

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, cache_size: int = DEFAULT_CACHE_SIZE) -> GeoDB:
        """Open and check a `.mmdb` (or `.mmdb.gz`) file; `GeoError` names the path and the reason."""
        path = Path(path)
        if path.is_dir():
            raise GeoError(f"geo database {path}: is a directory, not a .mmdb file")
        try:
            if path.suffix == ".gz":
                reader = _open_gzip(path)
            else:
                reader = maxminddb.open_database(os.fspath(path), maxminddb.MODE_AUTO)
        except (OSError, EOFError, zlib.error, maxminddb.InvalidDatabaseError, ValueError, TypeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
            raise GeoError(f"geo database {path}: {reason}") from exc
        try:
            metadata = reader.metadata()
            if metadata.ip_version not in (4, 6):
                raise GeoError(f"geo database {path}: unsupported ip_version {metadata.ip_version}")
            # Walk the tree and decode a record once, so a corrupt file fails here, not per lookup.
            reader.get("1.1.1.1")
            if metadata.ip_version == 6:
                reader.get("2001:4860::1")
        except GeoError:
            reader.close()
            raise
        except (maxminddb.InvalidDatabaseError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            reader.close()
            raise GeoError(f"geo database {path}: {exc}") from exc
        return cls(reader, path, cache_size)

    def lookup(self, addr: IPAddress) -> Location:
        """The address's location; `UNKNOWN` ('', '') when not public or not in the database."""
        v4 = isinstance(addr, _IPV4)
        value = int(addr)
        cache = self._cache
        if cache is None:
            return self._resolve(value, v4, addr)
        key = value if v4 else ~value  # IPv6 keys are negative: 0.0.0.0 and :: are different keys
        location = cache.get(key)
        if location is None:
            location = self._resolve(value, v4, addr)
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[key] = location
        return location

    def close(self) -> None:
        """Unmap the file. Lookups after this raise ValueError (answers already cached excepted)."""
        self._reader.close()

    def __repr__(self) -> str:
        return f"GeoDB({str(self.path)!r}, {self.description!r})"

    def _resolve(self, value: int, v4: bool, addr: IPAddress | None) -> Location:
        if not v4:
            if value >> 32 == 0xFFFF:  # ::ffff:a.b.c.d, IPv4-mapped
                value, v4, addr = value & 0xFFFFFFFF, True, None
            elif value >> 112 == 0x2002:  # 2002:aabb:ccdd::/48, 6to4
                value, v4, addr = (value >> 80) & 0xFFFFFFFF, True, None
        if v4:
            if _reserved_v4(value):
                return UNKNOWN
            if addr is None:
                addr = ipaddress.IPv4Address(value)
        else:
            if not self._ipv6 or _reserved_v6(value):
                return UNKNOWN
            if addr is None:
                addr = ipaddress.IPv6Address(value)
        try:
            record = self._reader.get(addr)
        except (maxminddb.InvalidDatabaseError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            if self._reader.closed:
                raise
            if not self._failed:
                self._failed = True
                log.warning("geo database %s: lookup of %s failed, answering unknown: %s", self.path, addr, exc)
            return UNKNOWN
        return _location(record)


def _open_gzip(path: Path) -> Any:
    """Decompress to a temporary file, map it with the C reader, unlink it (the mapping stays)."""
    with gzip.open(path, "rb") as src, tempfile.NamedTemporaryFile(prefix="geo-", suffix=".mmdb", delete=False) as dst:
        tmp = Path(dst.name)
        try:
            shutil.copyfileobj(src, dst, 1 << 20)
        except BaseException:
            dst.close()
            tmp.unlink(missing_ok=True)
            raise
    try:
        return maxminddb.open_database(os.fspath(tmp), maxminddb.MODE_AUTO)
    finally:
        try:
            tmp.unlink()
        except OSError:  # e.g. Windows, where a mapped file cannot be removed: left in the temp dir
            log.debug("could not remove %s", tmp)


@functools.cache
def default_geo() -> GeoDB | None:
    """The embedded offline database (one shared instance: do not close it); None if not shipped."""
    if not DEFAULT_DB_PATH.is_file():
        return None
    return GeoDB.open(DEFAULT_DB_PATH)
