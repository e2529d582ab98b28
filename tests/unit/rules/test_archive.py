"""The audit trail: the content digest of a rule set, the archive of served sets, `rules show` and `rules diff`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.cli import main
from engine.rules import load_ruleset
from engine.rules.archive import FILES, MANIFEST, ArchiveError, archive, diff, find, read_rules, show
from tests.support import RULES


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    return folder


def keep(folder: Path, into: Path) -> Path:
    rs = load_ruleset(folder)
    kept = archive(into, Path(rs.root), rs.version, rs.digest, rs.manifest)
    assert kept is not None
    return kept


def test_two_texts_under_one_version_have_two_digests(rules_copy: Path) -> None:
    before = load_ruleset(rules_copy)
    assert load_ruleset(rules_copy).digest == before.digest  # the same files: the same digest
    rules = rules_copy / "rules.yaml"
    rules.write_text(
        rules.read_text().replace(
            'condition: "card_since_previous_1h < 30"', 'condition: "card_since_previous_1h < 20"'
        )
    )
    after = load_ruleset(rules_copy)
    assert after.version == before.version and after.digest != before.digest
    # A list file is part of the set too, and so is a file's name.
    (rules_copy / "lists" / "blocked_cards.txt").write_text("card-stolen-0001\ncard-stolen-0002\ncard-new\n")
    assert load_ruleset(rules_copy).digest not in (before.digest, after.digest)
    assert {e.name for e in after.manifest} >= {"engine.yaml", "rules.yaml", "lists/blocked_cards.txt"}


def test_an_archived_set_is_kept_once_and_shown_by_digest(rules_copy: Path, tmp_path: Path) -> None:
    into = tmp_path / "archive"
    kept = keep(rules_copy, into)
    assert kept == keep(rules_copy, into)  # once per digest
    digest = kept.name
    m = json.loads((kept / MANIFEST).read_text())
    assert m["digest"] == digest and m["version"] == load_ruleset(rules_copy).version
    assert (kept / FILES / "rules.yaml").read_bytes() == (rules_copy / "rules.yaml").read_bytes()
    assert (kept / FILES / "lists" / "blocked_ip_ranges.txt").is_file()
    assert find(into, digest[:8]) == kept
    text = show(kept)
    assert text.startswith(f"# rule set {m['version']} ({digest})")
    assert "# --- rules.yaml" in text and "id: card_repeat_within_30s" in text
    with pytest.raises(ArchiveError, match="no rule set with digest"):
        find(into, "0123456789abcdef")
    with pytest.raises(ArchiveError, match="is not a rule set digest"):
        find(into, "xyz")


def test_a_set_that_changed_since_it_was_loaded_is_not_archived_under_its_digest(
    rules_copy: Path, tmp_path: Path
) -> None:
    rs = load_ruleset(rules_copy)
    (rules_copy / "rules.yaml").write_text((rules_copy / "rules.yaml").read_text() + "\n# edited\n")
    assert archive(tmp_path / "archive", Path(rs.root), rs.version, rs.digest, rs.manifest) is None
    assert not (tmp_path / "archive" / rs.digest).exists()
    assert list((tmp_path / "archive").iterdir()) == []  # no staging folder left behind


def test_diff_lists_rules_added_removed_and_changed(rules_copy: Path, tmp_path: Path) -> None:
    before = read_rules(rules_copy, "before")
    rules = rules_copy / "rules.yaml"
    text = rules.read_text()
    text = text.replace('condition: "card_since_previous_1h < 30"', 'condition: "card_since_previous_1h <\n      20"')
    text = text.replace("    rollout: 25\n", "    rollout: 50\n")
    text = text.replace("  - id: very_large_amount", "  - id: very_large_amount_eur")
    rules.write_text(text)
    lines = diff(before, read_rules(rules_copy, "after"))
    assert lines[0].startswith("+ added    very_large_amount_eur: review when amount >= 10000 (mode active")
    assert lines[1].startswith("- removed  very_large_amount: review when amount >= 10000")
    assert "~ changed  card_repeat_within_30s:" in lines
    assert "    condition: 'card_since_previous_1h < 30' -> 'card_since_previous_1h < 20'" in lines
    assert "~ changed  ip_burst:" in lines and "    rollout: 25 -> 50" in lines
    assert diff(before, before) == []


def test_rules_show_and_diff_from_the_command_line(
    rules_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two texts under one version: two digests in the archive, and `rules diff` shows the change."""
    into = tmp_path / "archive"
    first = keep(rules_copy, into).name
    rules = rules_copy / "rules.yaml"
    rules.write_text(rules.read_text().replace("    rollout: 25\n", "    rollout: 50\n"))  # the same version
    second = keep(rules_copy, into).name
    assert (
        first != second
        and load_ruleset(rules_copy).version == json.loads((into / first / MANIFEST).read_text())["version"]
    )
    capsys.readouterr()
    assert main(["rules", "show", "--digest", first, "--archive", str(into)]) == 0
    assert "rollout: 25" in capsys.readouterr().out
    assert main(["rules", "diff", first, second, "--archive", str(into)]) == 1  # 1: the sets differ
    out = capsys.readouterr().out
    assert "~ changed  ip_burst:\n    rollout: 25 -> 50\n" in out
    assert main(["rules", "diff", second, str(rules_copy), "--archive", str(into)]) == 0  # a digest and a folder
    assert "no rule added, removed or changed" in capsys.readouterr().out
    assert main(["rules", "show", "--digest", "deadbeefdeadbeef", "--archive", str(into)]) == 2
    assert "no rule set with digest deadbeefdeadbeef" in capsys.readouterr().err
