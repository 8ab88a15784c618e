"""Plans as reviewable YAML files with a content fingerprint.

The fingerprint is the SHA-256 of the plan's content in canonical JSON (sorted keys, no whitespace), so
reformatting or comments do not count as edits but any change of content does. The file holds no
timestamps: the same inventory and options give a byte-identical file, which diffs cleanly in review.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from migrator.errors import UserError
from migrator.planning.planner import Estimate, Plan, PlannedBatch, PlannedMailbox, Policy

# libyaml when PyYAML has it: a 50,000-mailbox plan renders in about 3 s instead of 8
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

HEADER = ("# migrator plan: review it, then run `migrator run {path} --stage prestage`.\n"
          "# Editing the content changes its fingerprint; `run` then refuses it unless --accept-edits is given.\n")


def plan_to_data(plan: Plan) -> dict[str, Any]:
    return {
        "plan": plan.name,
        "source": plan.source,
        "target": plan.target,
        "stages": list(plan.stages),
        "policy": {"max_mailboxes": plan.policy.max_mailboxes, "max_size": plan.policy.max_size,
                   "window": plan.policy.window, "allow_split": plan.policy.allow_split,
                   "start": plan.policy.start.isoformat() if plan.policy.start else None,
                   "timezone": plan.policy.timezone},
        "estimate_rate": {"messages_per_second": round(plan.rate[0], 3), "bytes_per_second": plan.rate[1],
                          "basis": plan.rate_basis},
        "batches": [{
            "id": b.id,
            "window": b.window,
            "estimate": {"messages": b.estimate.messages, "bytes": b.estimate.size, "seconds": b.estimate.seconds},
            "fits_window": b.fits_window,
            "schedule": b.schedule,
            "mailboxes": [{"source": m.source, "target": m.target, "messages": m.messages, "bytes": m.size,
                           "group": m.group} for m in b.mailboxes],
            "rollback": {
                "command": f"migrator rollback plans/{plan.name}.yaml --batch {b.id} --yes",
                "removes": "exactly the messages and empty folders migrator created for these mailboxes",
                "dns": sorted({m.source.rsplit("@", 1)[1] for m in b.mailboxes}),
                "dns_note": "if MX records were switched at cutover, restore them for these domains "
                            "(the values `migrator check` recorded before the cutover)",
            },
        } for b in plan.batches],
    }


def fingerprint(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def render_plan(plan: Plan, path: Path) -> str:
    data = plan_to_data(plan)
    body = yaml.dump({"fingerprint": fingerprint(data), **data}, Dumper=_DUMPER, sort_keys=False, allow_unicode=True,
                          default_flow_style=False, width=120)
    return HEADER.format(path=path) + body


def write_plan(plan: Plan, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_plan(plan, path), encoding="utf-8")


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise UserError(f"{where}: missing key '{key}'")
    value = data[key]
    if not isinstance(value, kind):
        raise UserError(f"{where}: '{key}' must be a {kind.__name__}")
    return value


def _number(data: dict[str, Any], key: str, kind: type[int] | type[float], where: str) -> Any:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{where}: '{key}' must be a number, not {value!r}")
    return kind(value)


def _mapping(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: '{key}' must be a mapping")
    return value


def _batch(data: Any, where: str) -> PlannedBatch:
    if not isinstance(data, dict):
        raise UserError(f"{where}: each batch must be a mapping")
    batch_id = _field(data, "id", str, where)
    estimate = _field(data, "estimate", dict, f"{where} {batch_id}")
    mailboxes = []
    for index, item in enumerate(_field(data, "mailboxes", list, f"{where} {batch_id}"), start=1):
        here = f"{where} {batch_id} mailbox {index}"
        if not isinstance(item, dict):
            raise UserError(f"{here}: must be a mapping")
        mailboxes.append(PlannedMailbox(_field(item, "source", str, here), _field(item, "target", str, here),
                                        _number(item, "messages", int, here), _number(item, "bytes", int, here),
                                        item.get("group")))
    here = f"{where} {batch_id} estimate"
    schedule = data.get("schedule")
    if schedule is not None and not (isinstance(schedule, dict) and all(isinstance(v, str) for v in schedule.values())):
        raise UserError(f"{where} {batch_id}: 'schedule' must map stage names to times")
    return PlannedBatch(batch_id, data.get("window"), tuple(mailboxes),
                        Estimate(_number(estimate, "messages", int, here), _number(estimate, "bytes", int, here),
                                 _number(estimate, "seconds", int, here)),
                        schedule, bool(data.get("fits_window", True)))


def _date(value: Any, where: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise UserError(f"{where}: policy start {value!r} is not a date (YYYY-MM-DD)") from None


def read_plan(path: Path, *, accept_edits: bool = False) -> tuple[Plan, str, bool]:
    """(plan, fingerprint of its content, edited?). Raises UserError for a malformed file, and for an
    edited one unless `accept_edits` (bad input: exit 2, nothing changed)."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except FileNotFoundError:
        raise UserError(f"{path}: no such plan file") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a plan file is a mapping with plan, batches and fingerprint")
    recorded = data.pop("fingerprint", None)
    actual = fingerprint(data)
    edited = recorded != actual
    if edited and not accept_edits:
        raise UserError(f"{path}: edited after creation (fingerprint {recorded} != content {actual}); "
                        f"review the change and re-run with --accept-edits, or recreate it with `migrator plan create`")
    where = str(path)
    policy = _mapping(data, "policy", where)
    rate = _mapping(data, "estimate_rate", where)
    batches = tuple(_batch(item, where) for item in _field(data, "batches", list, where))
    ids = [b.id for b in batches]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: a batch id appears twice")
    sources = [m.source for b in batches for m in b.mailboxes]
    if len(set(sources)) != len(sources):
        raise UserError(f"{path}: a mailbox appears in more than one batch")
    plan = Plan(_field(data, "plan", str, where), str(data.get("source", "")), str(data.get("target", "")),
                tuple(_field(data, "stages", list, where)),
                Policy(_number(policy, "max_mailboxes", int, where), policy.get("max_size"), policy.get("window"),
                       bool(policy.get("allow_split", False)), _date(policy.get("start"), where),
                       str(policy.get("timezone") or "UTC")),
                (_number(rate, "messages_per_second", float, where), _number(rate, "bytes_per_second", int, where)),
                batches, str(rate.get("basis", "default")))
    return plan, actual, edited
