"""The README's "Layout" section, from the tree: `python scripts/layout.py` prints it, `--write` updates README.md.

Packages of engine/ are listed in their import layers (pyproject.toml
[tool.importlinter], checked by `make imports`), top to bottom, each with the
modules it holds today; tests/ by folder. tests/integration/test_readme.py
fails when the README's section differs from what this prints.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMN = 29
NOTES = {
    "engine.cli": "the command line (risk-engine)",
    "engine.desk": "the review desk (risk-engine console; templates/ static/ migrations/)",
    "engine.service": "the gRPC layer (pb/: generated stubs)",
    "engine.offline": "replay, backtest, training, audit over history (spark/: the same on Apache Spark)",
    "engine.config": "server settings",
    "engine.reload": "hot reload",
    "engine.pipeline": "the one scoring pipeline",
    "engine.model": "LightGBM models, explanations, registry",
    "engine.rules": "the rule language and rule sets",
    "engine.windows": "velocity windows and their stores",
}
DOMAIN = "the domain: transactions, decisions, enrichment"
OTHER = (
    ("rules/", "the shipped rule set (and mappings/: the column mappings of its data)"),
    ("models/", "the shipped model registry and its training config"),
    ("tests/", "unit/<package>/test_<module>.py, integration/, parity/, support/ (shared with benchmarks)"),
    ("benchmarks/", "latency and throughput measurements and their results"),
    ("scripts/", "proto stubs, the geo database, this section, one-off analyses"),
    ("docs/", "semantics: windows, rules, decisions, models, data mappings, the desk (img/: its screenshots), Spark"),
)


def _modules(package: Path) -> str:
    names = sorted(p.name for p in package.iterdir() if p.suffix in (".py", ".c", ".lua") and p.name != "__init__.py")
    subs = sorted(p.name + "/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    return " ".join(names + subs)


def _line(left: str, right: str) -> str:
    return f"{left:<{COLUMN}}{right}".rstrip() if len(left) < COLUMN else f"{left}  {right}".rstrip()


def layout() -> str:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    out = [
        "proto/risk/v1/risk.proto     the gRPC contract",
        "engine/                      import layers, top to bottom:",
    ]
    for layer in config["layers"]:
        names = [n.strip() for part in layer.split("|") for n in part.split(":")]
        packages = [n for n in names if (ROOT / Path(*n.split("."))).is_dir()]
        modules = [n for n in names if n not in packages]
        if modules:
            files = " ".join(n.split(".")[-1] + ".py" for n in modules)
            note = (
                "; ".join(NOTES[n] for n in modules if n in NOTES) or "the domain: transactions, decisions, enrichment"
            )
            out.append(_line(f"  {files}", note) if len(files) < 40 else f"  {files}\n{'':<{COLUMN}}{note}")
        for name in packages:
            folder = ROOT / Path(*name.split("."))
            out.append(f"  {folder.name + '/':<11}{_modules(folder)}")
            out.append(f"{'':<{COLUMN}}{NOTES.get(name, '')}")
    out.append("  data/geo/  the embedded IP-to-country database (CC BY 4.0, see NOTICE)")
    tests = ROOT / "tests"
    for left, right in OTHER:
        out.append(_line(left, right))
        if left == "tests/":
            for sub in ("unit", "integration", "parity", "support"):
                folders = sorted(
                    p.name + "/" for p in (tests / sub).iterdir() if p.is_dir() and p.name != "__pycache__"
                )
                count = len(list((tests / sub).rglob("*.py"))) - len(list((tests / sub).rglob("__init__.py")))
                out.append(_line(f"  {sub}/", f"{count} files" + (f"; {' '.join(folders)}" if folders else "")))
    return "\n".join(out) + "\n"


def readme_section(text: str) -> tuple[int, int]:
    start = text.index("## Layout\n\n```\n") + len("## Layout\n\n```\n")
    return start, text.index("```\n", start)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = readme_section(text)
    if "--write" in sys.argv[1:]:
        readme.write_text(text[:start] + layout() + text[end:])
    else:
        print(layout(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
