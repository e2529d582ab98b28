"""engine.geo: IP -> country/region from MaxMind DB files written here, and the embedded default."""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.geo import UNKNOWN, GeoDB, GeoError, Location, default_geo
from tests.support.mmdb import MMDBWriter, encode, write_mmdb

ip = ipaddress.ip_address

CITY = {
    # GeoIP2/GeoLite2 City layout (trimmed): country, registered country, subdivisions.
    "81.2.69.0/24": {
        "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
        "registered_country": {"iso_code": "GB"},
        "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}, {"iso_code": "WBK"}],
        "city": {"names": {"en": "London"}},
        "location": {"latitude": 51.5, "longitude": -0.1, "accuracy_radius": 100},
    },
    "89.160.20.0/22": {"country": {"iso_code": "DE"}, "subdivisions": [{"iso_code": "BE"}]},
    "89.160.20.128/25": {"country": {"iso_code": "DE"}, "subdivisions": [{"iso_code": "HH"}]},  # more specific
    "2001:480::/32": {"country": {"iso_code": "US"}, "subdivisions": [{"iso_code": "CA"}]},
    "2a02:d300::/32": {"country": {"iso_code": "JP"}, "subdivisions": [{"iso_code": "13"}]},
    # An anonymous/satellite range: no country, only where it is registered.
    "67.43.156.0/24": {"registered_country": {"iso_code": "BT"}, "traits": {"is_anonymous_proxy": True}},
    # Data for private space, which the engine must never use.
    "10.0.0.0/8": {"country": {"iso_code": "FR"}},
    "fc00::/7": {"country": {"iso_code": "FR"}},
}

FLAT = {
    # ip-location-db / DB-IP lite via ip-location-db layout.
    "8.8.8.0/24": {"country_code": "US"},
    "193.99.144.0/24": {"country_code": "DE"},
    "2001:4860::/32": {"country_code": "US"},
    "1.0.16.0/20": {"country_code": "jp"},  # lower case
    "5.5.5.0/24": {"country_code": "ZZ"},  # "unknown" in some databases
    "6.6.6.0/24": {"country_code": "EU"},  # not a country
    "7.7.7.0/24": {"country_code": "AT", "region_code": "9"},  # a region code, when a layout has one
}


@pytest.fixture(params=[24, 28, 32], ids=lambda size: f"record{size}")
def city_db(request: pytest.FixtureRequest, tmp_path: Path) -> GeoDB:
    path = write_mmdb(tmp_path / "city.mmdb", CITY, record_size=request.param, database_type="GeoIP2-City")
    return GeoDB.open(path)


@pytest.fixture
def flat_db(tmp_path: Path) -> GeoDB:
    return GeoDB.open(write_mmdb(tmp_path / "flat.mmdb", FLAT, database_type="geo-whois-asn-country"))


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("81.2.69.160", Location("GB", "ENG")),
        ("89.160.20.1", Location("DE", "BE")),
        ("89.160.20.200", Location("DE", "HH")),
        ("89.160.23.255", Location("DE", "BE")),
        ("2001:480::1", Location("US", "CA")),
        ("2001:480:ffff:ffff:ffff:ffff:ffff:ffff", Location("US", "CA")),
        ("2a02:d300:1::5", Location("JP", "13")),
        ("::ffff:81.2.69.160", Location("GB", "ENG")),  # IPv4-mapped IPv6 is looked up as IPv4
        ("2002:5102:45a0::1", Location("GB", "ENG")),  # 6to4: the embedded 81.2.69.160
        ("67.43.156.7", Location("BT", "")),  # falls back to registered_country
    ],
)
def test_city_layout_resolves_ipv4_and_ipv6(city_db: GeoDB, addr: str, expected: Location) -> None:
    assert city_db.lookup(ip(addr)) == expected


@pytest.mark.parametrize(
    "addr",
    [
        "81.2.70.1",  # public, not in the database
        "2001:481::1",
        "10.1.2.3",  # private: the database has data (FR) but it must not be used
        "fd00::1",
        "127.0.0.1",
        "0.0.0.0",
        "169.254.1.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "ff02::1",
        "2001:db8::1",
        "3fff::1",
        "::ffff:10.0.0.1",
    ],
)
def test_unknown_and_non_public_addresses(city_db: GeoDB, addr: str) -> None:
    assert city_db.lookup(ip(addr)) == UNKNOWN == Location("", "")


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("8.8.8.8", Location("US", "")),
        ("193.99.144.80", Location("DE", "")),
        ("2001:4860:4860::8888", Location("US", "")),
        ("1.0.16.1", Location("JP", "")),
        ("5.5.5.5", UNKNOWN),
        ("6.6.6.6", UNKNOWN),
        ("7.7.7.7", Location("AT", "9")),
        ("9.9.9.9", UNKNOWN),
    ],
)
def test_flat_country_code_layout(flat_db: GeoDB, addr: str, expected: Location) -> None:
    assert flat_db.lookup(ip(addr)) == expected


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"country": "NZ", "country_name": "New Zealand"}, Location("NZ", "")),  # IPinfo-style
        ({"country": {"iso_code": "FR"}, "subdivisions": [{"iso_code": "idf"}]}, Location("FR", "IDF")),
        ({"country": {}, "registered_country": {"iso_code": "SE"}}, Location("SE", "")),
        ({"country": {"iso_code": "XX"}, "registered_country": {"iso_code": "SE"}}, Location("SE", "")),
        ({"country": {"iso_code": "IT"}, "subdivisions": []}, Location("IT", "")),
        ({"country": {"iso_code": "IT"}, "subdivisions": [5]}, Location("IT", "")),
        ({"country": {"iso_code": "IT"}, "subdivisions": "62"}, Location("IT", "")),
        ({"country": {"iso_code": "IT"}, "subdivisions": [{"iso_code": "TOOLONG"}]}, Location("IT", "")),
        ({"country": {"iso_code": "IT"}, "subdivisions": [{"iso_code": "é"}]}, Location("IT", "")),
        ({"country": {"iso_code": "IT"}, "subdivisions": [{"names": {"en": "Lazio"}}]}, Location("IT", "")),
        ({"subdivisions": [{"iso_code": "BE"}]}, UNKNOWN),  # a region without a country
        ({"country": {"iso_code": ["DE"]}}, UNKNOWN),
        ({"country": 49}, UNKNOWN),
        ({"country_code": ""}, UNKNOWN),
        ({"country_code": "DEU"}, UNKNOWN),
        ({"country_code": 840}, UNKNOWN),
        ({"asn": 3320}, UNKNOWN),
        ({}, UNKNOWN),
        ("DE", UNKNOWN),
        (["DE"], UNKNOWN),
        (276, UNKNOWN),
        (True, UNKNOWN),
        (b"DE", UNKNOWN),
    ],
)
def test_odd_records_never_raise(tmp_path: Path, record: object, expected: Location) -> None:
    db = GeoDB.open(write_mmdb(tmp_path / "odd.mmdb", {"11.0.0.0/8": record}))
    assert db.lookup(ip("11.1.2.3")) == expected


def test_ipv4_only_database(tmp_path: Path) -> None:
    db = GeoDB.open(write_mmdb(tmp_path / "v4.mmdb", {"8.8.8.0/24": {"country_code": "US"}}, ip_version=4))
    assert db.lookup(ip("8.8.8.8")) == Location("US", "")
    assert db.lookup(ip("::ffff:8.8.8.8")) == Location("US", "")
    assert db.lookup(ip("2001:4860::1")) == UNKNOWN  # no IPv6 data: unknown, not an error


@pytest.mark.parametrize("cache_size", [0, 1, 2, 16_384])
def test_cache_gives_the_same_answers(tmp_path: Path, cache_size: int) -> None:
    path = write_mmdb(tmp_path / "city.mmdb", CITY)
    reference = GeoDB.open(path, cache_size=0)
    db = GeoDB.open(path, cache_size=cache_size)
    addrs = [ip(a) for a in ("81.2.69.160", "89.160.20.200", "10.0.0.1", "2001:480::1", "2a02:d300::1", "::")]
    # Some IPv4 and IPv6 values are equal as integers (0.0.0.0 and ::): they must not share an entry.
    addrs += [ipaddress.IPv6Address(int(addrs[0])), ipaddress.IPv4Address(0)]
    for _ in range(3):
        for addr in addrs:
            assert db.lookup(addr) == reference.lookup(addr)


def test_description_and_gzip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"  # where a .gz is decompressed to, then unlinked
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    epoch = int(datetime.datetime(2026, 6, 17, 19, 51, tzinfo=datetime.UTC).timestamp())
    writer = MMDBWriter(database_type="GeoLite2-Country", build_epoch=epoch)
    writer.insert("81.2.69.0/24", {"country": {"iso_code": "GB"}})
    raw = writer.write(tmp_path / "country.mmdb")
    compressed = tmp_path / "country.mmdb.gz"
    compressed.write_bytes(gzip.compress(raw.read_bytes()))

    for path in (raw, compressed):
        db = GeoDB.open(path)
        assert db.description == "GeoLite2-Country built 2026-06-17"
        assert db.lookup(ip("81.2.69.1")) == Location("GB", "")
        db.close()
    with pytest.raises(GeoError):
        GeoDB.open(_write(tmp_path / "cut.mmdb.gz", gzip.compress(raw.read_bytes())[:-100]))
    assert not list(scratch.iterdir())  # nothing left behind, also after a failure


def test_bad_data_found_at_lookup_answers_unknown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    networks = {"8.8.8.0/24": {"country_code": "US"}, "1.1.1.0/24": {"country_code": "AU"}}
    path = write_mmdb(tmp_path / "bad.mmdb", networks)
    data = bytearray(path.read_bytes())
    data[data.index(encode({"country_code": "US"}))] = 0x3F  # the record becomes a pointer out of bounds
    path.write_bytes(bytes(data))
    db = GeoDB.open(path, cache_size=0)  # the check at open reads 1.1.1.1, which is intact
    assert db.lookup(ip("8.8.8.8")) == UNKNOWN
    assert db.lookup(ip("8.8.8.9")) == UNKNOWN
    assert db.lookup(ip("1.1.1.1")) == Location("AU", "")
    warnings = [r for r in caplog.records if r.name == "risk_engine.geo"]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()  # logged once, not per lookup


def test_lookup_after_close_raises(tmp_path: Path) -> None:
    db = GeoDB.open(write_mmdb(tmp_path / "flat.mmdb", FLAT), cache_size=0)
    db.close()
    with pytest.raises(ValueError, match="closed"):
        db.lookup(ip("8.8.8.8"))


def _corrupt_tree(tmp_path: Path) -> Path:
    path = write_mmdb(tmp_path / "tree.mmdb", FLAT)
    data = bytearray(path.read_bytes())
    data[:6] = b"\xff" * 6  # the root node now points far beyond the data section
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: tmp / "missing.mmdb", "No such file or directory"),
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: _write(tmp / "empty.mmdb", b""), ""),
        (lambda tmp: _write(tmp / "garbage.mmdb", b"this is not a database" * 100), "valid MaxMind DB"),
        (lambda tmp: _truncated(tmp), ""),
        (lambda tmp: _corrupt_tree(tmp), ""),
        (lambda tmp: _write(tmp / "garbage.mmdb.gz", b"not gzip at all"), "gzip"),
        (lambda tmp: _write(tmp / "cut.mmdb.gz", gzip.compress(b"x" * 1000)[:20]), ""),
        (lambda tmp: tmp / "missing.mmdb.gz", "No such file or directory"),
    ],
    ids=["missing", "directory", "empty", "garbage", "truncated", "corrupt-tree", "bad-gzip", "cut-gzip", "missing-gz"],
)
def test_bad_files_raise_geo_error_with_the_path(tmp_path: Path, make: Callable[[Path], Path], reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(GeoError) as info:
        GeoDB.open(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(reason, message), message
    assert isinstance(info.value, ValueError)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(tmp_path: Path) -> Path:
    path = write_mmdb(tmp_path / "cut.mmdb", FLAT)
    return _write(path, path.read_bytes()[:-40])  # cuts into the metadata map


# -- the embedded default ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_db() -> GeoDB:
    db = default_geo()
    assert db is not None, "the embedded database engine/data/geo/*.mmdb.gz is missing"
    return db


@pytest.mark.parametrize(
    ("addr", "country"),
    [
        ("8.8.8.8", "US"),  # Google Public DNS
        ("9.9.9.9", "US"),  # Quad9 (registered in the US)
        ("193.99.144.80", "DE"),  # heise.de
        ("194.25.0.1", "DE"),  # Deutsche Telekom
        ("133.11.0.1", "JP"),  # University of Tokyo, 133.0.0.0/8 (APNIC, JP)
        ("210.130.0.1", "JP"),  # IIJ
        ("81.2.69.160", "GB"),
        ("2001:4860:4860::8888", "US"),  # Google Public DNS over IPv6
        ("::ffff:8.8.8.8", "US"),
    ],
)
def test_embedded_default_resolves_public_addresses(default_db: GeoDB, addr: str, country: str) -> None:
    assert default_db.lookup(ip(addr)) == Location(country, "")


def test_embedded_default_basics(default_db: GeoDB) -> None:
    assert default_geo() is default_db  # one shared instance
    assert default_db.lookup(ip("10.0.0.1")) == UNKNOWN
    assert default_db.lookup(ip("2001:db8::1")) == UNKNOWN
    assert re.fullmatch(r".+ built \d{4}-\d{2}-\d{2}", default_db.description)
    readme = (Path(default_db.path).parent / "README.md").read_text()
    assert "CC BY 4.0" in readme and Path(default_db.path).name in readme
