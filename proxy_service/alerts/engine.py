"""The alert engine: rules, channels and silences (in memory, persisted in DuckDB through the writer), the
evaluation loop, the state machines, and the /metrics view of alert states.

Evaluation (every `alert_interval_s`): window figures are read on a worker thread with their own cursor, pool
figures on the loop; each rule's state machine steps; transitions are recorded in `alert_events` and their
messages queued for delivery. Nothing here runs on the request path.

Cluster mode: only the leader (`Core.leads()`) evaluates and notifies, so each firing is sent once. After each
evaluation it shares its alert states through Redis; the other replicas load them, so every replica shows the same
active alerts and a newly elected leader carries on from them (no second "fired" message at a handover).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy_service import known_models, metrics
from proxy_service.alerts import backtest, queries, sources
from proxy_service.alerts.channels import Channel, ChannelError, new_secret, validate_url
from proxy_service.alerts.labels import MAX_SERIES, Admission, KnownLabels, admit
from proxy_service.alerts.notify import Notice, Notifier
from proxy_service.alerts.rules import (
    GROUP_BYS,
    MAX_WINDOW_S,
    METRICS,
    NameTaken,
    Rule,
    RuleError,
    default_rules,
    parse_rule,
)
from proxy_service.alerts.state import STATE_CODE, AlertState, Labels, Machine, Timing
from proxy_service.analytics import preagg_read

if TYPE_CHECKING:
    from proxy_service.core import Core

log = logging.getLogger("keyrack.alerts")
MAX_RULES = 500
MAX_CHANNELS = 100
MAX_SILENCES = 1000
MAX_SILENCE_S = 366 * 86400
MAX_LABEL_VALUE = 128  # the longest model id; project names and key ids are shorter
SERVED_SEED_S = 7 * 86400  # at the first evaluation, models served this far back are learned (from the rollup)


@dataclass
class Silence:
    id: str
    until: float
    rule_id: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    comment: str = ""
    created_at: float = 0.0

    def covers(self, rule_id: str, labels: Labels, now: float) -> bool:
        return now < self.until and self.rule_id in (None, rule_id) and set(self.labels) <= set(labels)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule_id": self.rule_id,
            "labels": dict(self.labels),
            "until": self.until,
            "comment": self.comment,
            "created_at": self.created_at,
        }


def _silence_labels(labels: Any) -> dict[str, str]:
    """A silence matches label sets by equality; alerts carry one label at most, named by GROUP_BYS."""
    names = [g for g in GROUP_BYS if g]
    if not isinstance(labels, dict):
        raise RuleError("labels", f"must be an object of label name ({', '.join(names)}) → value")
    for k, v in labels.items():
        if k not in names:
            raise RuleError(f"labels.{str(k)[:32]}", f"unknown label (alerts carry {', '.join(names)})")
        if not isinstance(v, str) or not 1 <= len(v) <= MAX_LABEL_VALUE or not v.isprintable():
            raise RuleError(f"labels.{k}", f"must be 1–{MAX_LABEL_VALUE} printable characters")
    return labels


def install(cur: duckdb.DuckDBPyConnection) -> bool:
    """Seed the default rules once per database (the tables come with the store's schema). Returns whether it did."""
    if cur.execute("SELECT 1 FROM alert_meta WHERE name = 'seeded'").fetchone():
        return False
    for rule in default_rules():
        cur.execute("INSERT OR REPLACE INTO alert_rules VALUES (?, ?, now())", [rule.id, json.dumps(rule.to_dict())])
    cur.execute("INSERT INTO alert_meta VALUES ('seeded', '1')")
    return True


class AlertEngine:
    def __init__(self, gw: Core) -> None:
        self.gw = gw
        self.rules: dict[str, Rule] = {}
        self.channels: dict[str, Channel] = {}
        self.silences: dict[str, Silence] = {}
        self.machines: dict[str, Machine] = {}
        self.admissions: dict[str, Admission] = {}  # per rule: its label sets at the last evaluation
        self.max_series = MAX_SERIES
        self._naming = asyncio.Lock()  # a name is checked and saved as one step
        self._served_until: datetime | None = None  # models served up to here are learned
        self.flaps = sources.FlapCounter()
        self.quota_rate: sources.QuotaRate | None = None  # set by the gateway to the forecast's rate meter
        self.notifier = Notifier(self._record, self._message_settings)
        self.evaluations = 0
        self.last_eval_ms = 0.0
        self.last_eval_at: float | None = None
        self._collector = _StateCollector(self)
        self._load()

    # -- storage ---------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        self.gw.writer.submit(install).result(30)
        self.rules, self.channels, self.silences = self._read_stored()

    def _read_stored(self) -> tuple[dict[str, Rule], dict[str, Channel], dict[str, Silence]]:
        rules: dict[str, Rule] = {}
        channels: dict[str, Channel] = {}
        silences: dict[str, Silence] = {}
        cur = self.gw.store.cursor()
        try:
            for rid, body in cur.execute("SELECT id, body FROM alert_rules").fetchall():
                try:
                    rules[rid] = parse_rule({**json.loads(body), "id": rid})
                except (RuleError, ValueError) as exc:
                    log.warning("ignoring stored alert rule %s: %s", rid, exc)
            for cid, name, url, secret, created in cur.execute("SELECT * FROM alert_channels").fetchall():
                channels[cid] = Channel(cid, name, url, secret, created or 0.0)
            for sid, rule_id, labels, until, comment, created in cur.execute("SELECT * FROM alert_silences").fetchall():
                lab = tuple(sorted(json.loads(labels or "{}").items()))
                silences[sid] = Silence(sid, until, rule_id, lab, comment or "", created or 0.0)
        finally:
            cur.close()
        return rules, channels, silences

    async def reload(self) -> None:
        """Re-read rules, channels and silences (cluster mode: another replica changed them)."""
        self.rules, self.channels, self.silences = await asyncio.to_thread(self._read_stored)
        for cid in set(self.notifier.lanes) - set(self.channels):  # deleted on another replica
            await self.notifier.forget(cid)

    async def _write(self, sql: str, params: list[Any]) -> None:
        # Bounded, and refused at once during a storage fault (admin: 503 with the reason).
        await self.gw.write(lambda cur: cur.execute(sql, params))
        self.gw.node.broadcast({"kind": "alerts"})  # the leader evaluates: every replica must know the same rules

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.notifier.start()
        metrics.REGISTRY.register(self._collector)
        self.gw.jobs.spawn(self._loop(), "alert-evaluator")  # cancelled with the gateway's other background tasks

    async def stop(self) -> None:
        """After the gateway's background tasks (the evaluator among them) have been cancelled."""
        await self.notifier.stop()
        metrics.REGISTRY.unregister(self._collector)

    async def _loop(self) -> None:
        node = self.gw.node
        while True:
            await asyncio.sleep(max(1, self.gw.config.alert_interval_s))
            try:
                if self.gw.leads():
                    await self.evaluate()
                    await node.share_alert_states(self.dump_states())
                else:
                    shared = await node.alert_states()
                    if shared is not None:
                        self.load_states(shared)
            except Exception:
                log.exception("alert evaluation failed")

    def dump_states(self) -> str:
        """The live (pending/firing) states as JSON, for the other replicas of a cluster."""
        return json.dumps([asdict(st) for m in list(self.machines.values()) for st in m.states.values()])

    def load_states(self, payload: str) -> None:
        """The leader's states; only for rules this replica has, at most `max_series` per rule (what comes from
        Redis is not trusted to be bounded)."""
        machines: dict[str, Machine] = {}
        for d in json.loads(payload):
            try:
                st = AlertState(**{**d, "labels": tuple((str(k), str(v)) for k, v in d["labels"])})
            except (TypeError, ValueError, KeyError):
                continue
            if st.rule_id not in self.rules or st.phase not in STATE_CODE or len(st.labels) > 1:
                continue
            if any(len(v) > MAX_LABEL_VALUE for _k, v in st.labels):
                continue
            machine = machines.setdefault(st.rule_id, Machine(st.rule_id))
            if len(machine.states) < self.max_series:
                machine.states[st.labels] = st
        self.machines = machines

    # -- evaluation ------------------------------------------------------------------------------------------------
    async def evaluate(self, now: float | None = None) -> None:
        started = time.perf_counter()
        now = time.time() if now is None else now
        rules = [r for r in list(self.rules.values()) if r.enabled]
        db_rules = [r for r in rules if METRICS[r.metric].source in ("requests", "attempts", "volume")]
        capacity = [r for r in rules if r.metric == "usable_capacity_pct"]
        db_values, demand = await asyncio.to_thread(self._read_db, db_rules, capacity, now) if rules else ({}, {})
        known = KnownLabels.of(self.gw.pool, self.gw.config.model_limits)
        demand = {m: v for m, v in demand.items() if known.model(m)}
        self.flaps.observe(self.gw.pool, now)
        live = sources.live_values(
            self.gw.pool, rules, demand, self.flaps, now, self.quota_rate, known.model, self.gw.clients
        )
        values = {**db_values, **live}
        for rule in rules:
            if rule.id not in self.rules:  # deleted while reading
                continue
            self._step(rule, values.get(rule.id, {}), now, known)
        self.notifier.report_suppressed()
        self.evaluations += 1
        self.last_eval_at = now
        self.last_eval_ms = (time.perf_counter() - started) * 1000

    def _read_db(
        self, rules: list[Rule], capacity: list[Rule], now: float
    ) -> tuple[dict[str, sources.Values], dict[str, float]]:
        cur = self.gw.store.cursor()
        try:
            self._learn_served(cur, now)
            values = sources.database_values(cur, rules, now)
            demand: dict[str, float] = {}
            if capacity:
                window = max(r.window_s for r in capacity)
                hi = sources.naive_utc(now)
                rows = queries.request_window(cur, hi - timedelta(seconds=window), hi, {}, "model")
                demand = {m: row["calls"] * 60.0 / window for m, row in rows.items() if m}
            return values, demand
        finally:
            cur.close()

    def _learn_served(self, cur: duckdb.DuckDBPyConnection, now: float) -> None:
        """Learn the models upstream served to authenticated clients since the last evaluation (on any replica:
        the database has every replica's calls), the first time over the last week's rollup."""
        hi = sources.naive_utc(now)
        models: list[str] = []
        if self._served_until is None and self.gw.rollup.usable:
            try:
                models = preagg_read.served_models(cur, hi - timedelta(seconds=SERVED_SEED_S))
            except duckdb.Error as exc:
                log.warning("could not read the models served in the last week: %s", exc)
        lo = self._served_until or hi - timedelta(seconds=MAX_WINDOW_S)
        models += queries.served_models(cur, lo, hi)
        for model in models:
            known_models.learn(model)
        self._served_until = hi

    def _step(self, rule: Rule, values: sources.Values, now: float, known: KnownLabels) -> None:
        machine = self.machines.setdefault(rule.id, Machine(rule.id))
        values, self.admissions[rule.id] = admit(rule, values, machine.states.keys(), known, self.max_series)
        breached = {labels: rule.breached(v) for labels, v in values.items()}
        silenced = {labels: self.silenced(rule.id, labels, now) for labels in set(values) | set(machine.states)}
        for st, t in machine.step(values, breached, Timing(rule.for_s, rule.repeat_s), now, silenced):
            notice = Notice(
                rule_id=rule.id,
                rule=rule.name,
                state="resolved" if t.kind == "resolved" else "firing",
                severity=rule.severity,
                metric=rule.metric,
                op=rule.op,
                threshold=rule.threshold,
                value=st.value,
                labels=dict(st.labels),
                started_at=t.started_at,
                at=t.at,
                kind=t.kind,
            )
            note = "" if t.notify else "silenced: not sent"
            if t.kind != "repeat" or t.notify:
                self._record(t.kind, notice, None, 0, note)
            if t.notify:
                for cid in rule.channels:
                    channel = self.channels.get(cid)
                    if channel is not None:
                        self.notifier.enqueue(channel, notice)

    def silenced(self, rule_id: str, labels: Labels, now: float) -> bool:
        return any(s.covers(rule_id, labels, now) for s in list(self.silences.values()))

    def _message_settings(self) -> tuple[str, str]:
        cfg = self.gw.config
        return cfg.language, cfg.dashboard_url

    def _record(self, kind: str, notice: Notice, channel: Channel | None, attempt: int, message: str) -> None:
        row = [
            uuid.uuid4().hex,
            sources.naive_utc(time.time()),
            kind,
            notice.rule_id,
            notice.rule,
            notice.severity,
            notice.state,
            json.dumps(notice.labels),
            notice.value,
            notice.threshold,
            channel.id if channel else None,
            attempt,
            message[:500],
        ]
        self.gw.writer.submit(
            lambda cur: cur.execute("INSERT INTO alert_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
        )

    # -- views -----------------------------------------------------------------------------------------------------
    def active(self) -> list[dict[str, Any]]:
        out = []
        for rule_id, machine in list(self.machines.items()):
            rule = self.rules.get(rule_id)
            if rule is None:
                continue
            for st in machine.states.values():
                if st.phase == "inactive":
                    continue
                out.append(
                    {
                        "rule_id": rule_id,
                        "name": rule.name,
                        "state": st.phase,
                        "since": st.since,
                        "value": st.value,
                        "labels": dict(st.labels),
                        "severity": rule.severity,
                        "metric": rule.metric,
                        "op": rule.op,
                        "threshold": rule.threshold,
                        "silenced": self.silenced(rule_id, st.labels, time.time()),
                    }
                )
        order = {"critical": 0, "warning": 1, "info": 2}
        return sorted(out, key=lambda a: (a["state"] != "firing", order.get(a["severity"], 3), a["since"] or 0))

    def firing_count(self) -> int:
        return sum(1 for a in self.active() if a["state"] == "firing")

    def secrets(self) -> list[str]:
        """Channel URLs, their secret parts and signing secrets, for the log scrubber."""
        return [s for c in list(self.channels.values()) for s in c.secrets()]

    # -- rules -----------------------------------------------------------------------------------------------------
    async def add_rule(self, body: dict[str, Any]) -> Rule:
        if len(self.rules) >= MAX_RULES:
            raise RuleError("rules", f"at most {MAX_RULES} rules")
        if "id" in body:
            raise RuleError("id", "is assigned by the server")
        rule = parse_rule(body, known_channels=set(self.channels))
        async with self._naming:
            await self._latest_names()
            self._name_free(rule)
            await self._save_rule(rule)
        return rule

    async def update_rule(self, rule_id: str, patch: dict[str, Any]) -> Rule:
        base = self.rules[rule_id]
        rule = parse_rule(patch, base=base, known_channels=set(self.channels))
        async with self._naming:
            await self._latest_names()
            self._name_free(rule)
            if (rule.metric, rule.filters, rule.group_by, rule.enabled) != (
                base.metric,
                base.filters,
                base.group_by,
                base.enabled,
            ):
                self.machines.pop(rule_id, None)  # a different question: start from inactive
                self.admissions.pop(rule_id, None)
            await self._save_rule(rule)
        return rule

    async def _latest_names(self) -> None:
        """The stored rules when another process may have changed them (a cluster replica), so a name another
        replica took a moment ago (its broadcast not heard yet, or lost) is seen as taken."""
        await self.gw.node.refresh_before_rule_change(self.reload)

    def _name_free(self, rule: Rule) -> None:
        """Rule names are unique (case and surrounding spaces aside): messages, /metrics and pages name rules."""
        name = rule.name.casefold()
        for other in list(self.rules.values()):
            if other.id != rule.id and other.name.casefold() == name:
                raise NameTaken("name", f"another rule is already named {other.name!r} (id {other.id})")

    async def _save_rule(self, rule: Rule) -> None:
        await self._write(
            "INSERT OR REPLACE INTO alert_rules VALUES (?, ?, now())", [rule.id, json.dumps(rule.to_dict())]
        )
        self.rules[rule.id] = rule

    async def delete_rule(self, rule_id: str) -> None:
        await self._write("DELETE FROM alert_rules WHERE id = ?", [rule_id])
        self.rules.pop(rule_id, None)
        self.machines.pop(rule_id, None)
        self.admissions.pop(rule_id, None)

    # -- channels --------------------------------------------------------------------------------------------------
    async def add_channel(self, body: dict[str, Any]) -> tuple[Channel, str | None]:
        """Returns the channel and, for a signed webhook, its secret (shown once)."""
        if len(self.channels) >= MAX_CHANNELS:
            raise ChannelError("channels", f"at most {MAX_CHANNELS} channels")
        unknown = sorted(set(body) - {"name", "url", "secret"})
        if unknown:
            raise ChannelError(unknown[0], "unknown channel field (allowed: name, url, secret)")
        url = validate_url(body.get("url"))
        name = body.get("name") or url.split("://", 1)[0]
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100 or not name.isprintable():
            raise ChannelError("name", "must be 1–100 printable characters")
        secret = body.get("secret")
        if secret is not None and (not isinstance(secret, str) or not 16 <= len(secret) <= 256):
            raise ChannelError("secret", "must be 16–256 characters")
        shown = None
        if url.startswith(("webhook+https://", "webhook+http://")) and secret is None:
            secret = shown = new_secret()
        channel = Channel(uuid.uuid4().hex[:12], name.strip(), url, secret)
        await self._write(
            "INSERT INTO alert_channels VALUES (?, ?, ?, ?, ?)",
            [channel.id, channel.name, channel.url, channel.secret, channel.created_at],
        )
        self.channels[channel.id] = channel
        return channel, shown

    async def delete_channel(self, channel_id: str) -> None:
        await self._write("DELETE FROM alert_channels WHERE id = ?", [channel_id])
        self.channels.pop(channel_id, None)
        await self.notifier.forget(channel_id)

    async def test_channel(self, channel_id: str) -> tuple[bool, str]:
        now = time.time()
        notice = Notice(
            rule_id="test",
            rule="Keyrack test",
            state="test",
            severity="info",
            metric="-",
            op=">",
            threshold=0.0,
            value=None,
            labels={},
            started_at=now,
            at=now,
            kind="test",
        )
        return await self.notifier.send_now(self.channels[channel_id], notice)

    # -- silences --------------------------------------------------------------------------------------------------
    async def add_silence(self, body: dict[str, Any], until: float) -> Silence:
        now = time.time()
        if len(self.silences) >= MAX_SILENCES:
            self.silences = {k: s for k, s in self.silences.items() if s.until > now}
            if len(self.silences) >= MAX_SILENCES:
                raise RuleError("silences", f"at most {MAX_SILENCES} silences")
        if not now < until <= now + MAX_SILENCE_S:
            raise RuleError("until", "must be in the future, within a year")
        rule_id = body.get("rule_id")
        if rule_id is not None and (not isinstance(rule_id, str) or rule_id not in self.rules):
            raise RuleError("rule_id", f"unknown rule id {str(rule_id)[:64]!r}")
        labels = _silence_labels(body.get("labels") or {})
        if rule_id is None and not labels:
            raise RuleError("rule_id", "name a rule or labels to silence (a silence of everything is not allowed)")
        comment = body.get("comment") or ""
        if not isinstance(comment, str) or len(comment) > 500:
            raise RuleError("comment", "must be text of at most 500 characters")
        s = Silence(uuid.uuid4().hex[:12], until, rule_id, tuple(sorted(labels.items())), comment, now)
        await self._write(
            "INSERT INTO alert_silences VALUES (?, ?, ?, ?, ?, ?)",
            [s.id, s.rule_id, json.dumps(dict(s.labels)), s.until, s.comment, s.created_at],
        )
        self.silences[s.id] = s
        return s

    async def delete_silence(self, silence_id: str) -> None:
        await self._write("DELETE FROM alert_silences WHERE id = ?", [silence_id])
        self.silences.pop(silence_id, None)

    # -- backtest --------------------------------------------------------------------------------------------------
    def backtest(self, cur: duckdb.DuckDBPyConnection, rule: Rule, now: float) -> dict[str, Any]:
        return backtest.run(cur, rule, sources.naive_utc(now))


class _StateCollector(Collector):
    def __init__(self, engine: AlertEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        e = self.engine
        fam = GaugeMetricFamily(
            "keyrack_alert_state",
            "Alert state per rule and label set: 0 inactive, 1 pending, 2 firing",
            labels=["rule", "rule_id", "severity", "labels"],
        )
        for rule in list(e.rules.values()):
            if not rule.enabled:
                continue
            states = list(e.machines.get(rule.id, Machine(rule.id)).states.values())
            if not states:
                fam.add_metric([rule.name, rule.id, rule.severity, ""], 0)
            for st in states:
                labels = ",".join(f"{k}={v}" for k, v in st.labels)
                fam.add_metric([rule.name, rule.id, rule.severity, labels], STATE_CODE[st.phase])
        yield fam
        excluded = GaugeMetricFamily(
            "keyrack_alert_series_excluded",
            "Label sets a rule left out of its own series at its last evaluation: values Keyrack does not know "
            "(unknown), or over the rule's series cap (folded into one '(others)' series)",
            labels=["rule_id", "reason"],
        )
        for rule_id, adm in list(e.admissions.items()):
            if rule_id in e.rules:
                for reason, n in (("unknown", adm.unknown), ("folded", adm.folded)):
                    if n:
                        excluded.add_metric([rule_id, reason], n)
        yield excluded
        yield GaugeMetricFamily("keyrack_alert_queue_depth", "Alert notifications waiting", value=e.notifier.depth())
        yield GaugeMetricFamily(
            "keyrack_alert_evaluation_seconds", "Duration of the last alert evaluation", value=e.last_eval_ms / 1000
        )
        yield CounterMetricFamily("keyrack_alert_evaluations", "Alert evaluations since start", value=e.evaluations)
