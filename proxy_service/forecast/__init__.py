"""Forecasts: when each (project, model) runs out of its daily quota (`exhaustion`), how much traffic is coming
(`demand`), and what the pool needs for a target load (`planner`). `engine` owns the schedule and the caches; nothing
here runs on the request path."""
