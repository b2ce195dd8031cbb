"""Routing rules: schema, loader, evaluator and alerts. Pure: imports only billing.models/money."""

from rules.evaluator import AlertMatch, MatchedRule, RuleActions, RuleEvaluation, alerts_for, evaluate_rules
from rules.loader import RulesError, default_rules_path, load_rules, load_rules_text, rules_path
from rules.schema import PRIORITIES, TRANSITIONS, Actions, Alert, ExchangeRates, Rule, RulesFile
from rules.watcher import RulesWatcher

__all__ = [
    "PRIORITIES",
    "TRANSITIONS",
    "Actions",
    "Alert",
    "AlertMatch",
    "ExchangeRates",
    "MatchedRule",
    "Rule",
    "RuleActions",
    "RuleEvaluation",
    "RulesError",
    "RulesFile",
    "RulesWatcher",
    "alerts_for",
    "default_rules_path",
    "evaluate_rules",
    "load_rules",
    "load_rules_text",
    "rules_path",
]
