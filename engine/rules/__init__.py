"""Rule sets: the YAML that analysts edit, checked with line numbers and compiled once.

`source` reads YAML keeping the position of every key and value, `expr`
compiles one condition, `ruleset` loads a folder into an immutable `RuleSet`
(rules, windows, model thresholds, fallback policy, currency table).
"""

from engine.rules.errors import RuleError, RuleSetInvalid
from engine.rules.ruleset import Rule, RuleSet, load_ruleset

__all__ = ["Rule", "RuleError", "RuleSet", "RuleSetInvalid", "load_ruleset"]
