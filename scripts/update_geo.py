"""Refresh the embedded IP-to-country database in engine/data/geo/.

    python scripts/update_geo.py [VERSION]        # default: the latest published version

Runs `npm pack @ip-location-db/geo-whois-asn-country-mmdb[@VERSION]` (npm must be installed),
takes the combined IPv4+IPv6 file geo-whois-asn-country.mmdb out of the tarball, checks that it
opens and answers, writes it gzip-compressed (reproducibly: no name, mtime 0) to
engine/data/geo/geo-whois-asn-country.mmdb.gz, and rewrites engine/data/geo/README.md with the
version, date, checksums and the licence text shipped in the package. Review the diff (licence
text included) before committing.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import ipaddress
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.geo import DEFAULT_DB_PATH, GeoDB  # noqa: E402

PACKAGE = "@ip-location-db/geo-whois-asn-country-mmdb"
MEMBER = "package/geo-whois-asn-country.mmdb"
LICENCE_MEMBER = "package/NRO_LICENSE"
README = DEFAULT_DB_PATH.parent / "README.md"

README_TEMPLATE = """\
# Embedded IP-to-country database

`{file}` is the default database of `engine.geo.default_geo()`:
country level only (no region), IPv4 and IPv6, used when the operator supplies no `.mmdb` of
their own. It works offline.

| | |
|---|---|
| source | npm package `{package}@{version}`, file `geo-whois-asn-country.mmdb` |
| project | ip-location-db by sapics (github.com/sapics/ip-location-db), "GeoFeed + Whois + ASN" country database |
| downloaded | {date} (`npm pack`) |
| database build | {description} |
| record layout | `{{"country_code": "US"}}` (ISO 3166-1 alpha-2), no region |
| `.mmdb` (uncompressed) | {raw_size:,} bytes, sha256 `{raw_sha}` |
| `{file}` (shipped) | {gz_size:,} bytes, sha256 `{gz_sha}` |

## Licence and attribution

The package's `package.json` says `CC0-1.0`, but the data it is built from, the Regional Internet
Registries' WHOIS and delegation statistics published by the NRO, is licensed under
**Creative Commons Attribution 4.0 International (CC BY 4.0)**, and the package ships this notice
(`NRO_LICENSE`), reproduced verbatim:

```
{licence}
```

So we treat the file as CC BY 4.0 and give the attribution: **IP-to-country data: ip-location-db
(github.com/sapics/ip-location-db), built from data of the Number Resource Organization (NRO,
nro.net) and the five RIRs (AFRINIC, APNIC, ARIN, LACNIC, RIPE NCC), licensed under CC BY 4.0
(creativecommons.org/licenses/by/4.0/).** The file is shipped unmodified apart from gzip
compression. CC BY 4.0 allows redistribution, also commercially, with that attribution; keep
this file next to the database.

## Caveats

- Country accuracy is that of registry data plus published geofeeds: good for "which country is
  this network in", wrong for some anycast, cloud and VPN ranges. Operators who need better data
  (and regions) supply their own GeoIP2/GeoLite2 City or Country file.
- The package's README (2026) warns that the data published to npm "contains bugs resulting in
  incorrect data" and that npm updates will stop in favour of the project's GitHub releases,
  which this machine cannot reach. Spot checks here were right for well-known networks (Google
  DNS, Deutsche Telekom, heise, University of Tokyo) but, for example, put 2001:200::/32 (WIDE,
  Japan) in AU. Treat it as a usable offline default, not as ground truth.

## Refresh

```sh
.venv/bin/python scripts/update_geo.py            # latest version on npm, or: ... update_geo.py VERSION
.venv/bin/pytest tests/test_geo.py                # the embedded-default tests pin real answers
```

The script runs `npm pack {package}`, checks that the file opens and answers, writes
`{file}` (gzip, no name, mtime 0) and regenerates this README. By hand: `npm pack
{package}@VERSION`, `tar xzf` it, `gzip -9 -n -c package/geo-whois-asn-country.mmdb >
engine/data/geo/{file}`, then update the table above.
"""


def main(argv: list[str]) -> int:
    spec = PACKAGE if not argv else f"{PACKAGE}@{argv[0]}"
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", spec, "--json", "--pack-destination", tmp], check=True, capture_output=True, text=True
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise SystemExit(f"npm pack produced {tarballs}: {out.stdout}")
        version = tarballs[0].name.removesuffix(".tgz").rsplit("-", 1)[1]
        with tarfile.open(tarballs[0]) as tar:
            raw = _member(tar, MEMBER)
            licence = _member(tar, LICENCE_MEMBER).decode().strip()
        raw_path = Path(tmp) / "geo.mmdb"
        raw_path.write_bytes(raw)
        db = GeoDB.open(raw_path, cache_size=0)
        if db.lookup(ipaddress.ip_address("8.8.8.8")).country != "US":
            raise SystemExit("sanity check failed: 8.8.8.8 is not US in the new file")
        description = db.description
        db.close()

    compressed = gzip.compress(raw, compresslevel=9, mtime=0)
    DEFAULT_DB_PATH.write_bytes(compressed)
    README.write_text(
        README_TEMPLATE.format(
            file=DEFAULT_DB_PATH.name,
            package=PACKAGE,
            version=version,
            date=datetime.datetime.now(datetime.UTC).date().isoformat(),
            description=description,
            raw_size=len(raw),
            raw_sha=hashlib.sha256(raw).hexdigest(),
            gz_size=len(compressed),
            gz_sha=hashlib.sha256(compressed).hexdigest(),
            licence=licence,
        )
    )
    print(f"{PACKAGE}@{version}: {DEFAULT_DB_PATH} ({len(compressed):,} bytes), {description}")
    return 0


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    handle = tar.extractfile(name)
    if handle is None:
        raise SystemExit(f"{name} missing from the package")
    return handle.read()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
