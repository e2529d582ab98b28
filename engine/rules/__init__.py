"""Rule sets: the YAML that analysts edit, checked with line numbers and compiled once.

`source` reads YAML keeping the position of every key and value, `expr`
compiles one condition, `loader` loads a folder (through `settings`,
`sections` and `rule_tests`) into the immutable `RuleSet` of `ruleset`
(rules, windows, model thresholds, fallback policy, currency table), and
`evaluate` runs it on one transaction.
"""

from engine.rules.errors import RuleError, RuleSetInvalid
from engine.rules.loader import load_ruleset
from engine.rules.ruleset import Rule, RuleSet

__all__ = ["Rule", "RuleError", "RuleSet", "RuleSetInvalid", "load_ruleset"]
