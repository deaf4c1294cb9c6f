"""Alerting: rules over the pool's health, a state machine per (rule, label set), notifications through Apprise.

Modules: `rules` (the rule model, the metric catalogue, the default rule set), `state` (the pure state machine),
`sources` (metric values from bounded reads and the live pool), `notify` (channels, messages, delivery),
`backtest` (how often a rule would have fired over 7 days), `engine` (the evaluation loop tying them together).
"""
