"""``/api/dead-letters``: the pages' data and actions as JSON, for scripts.

    GET  /api/dead-letters?reason=&store=&since=&limit=&offset=
    GET  /api/dead-letters/<entry id or job id>
    POST /api/dead-letters/replay   {"ids": [...]} | {"filter": {...}} | {"all": true}, "dry_run"
    POST /api/dead-letters/purge    the same

Behind Flower's API authentication (``BaseApiHandler``). A filter holds ``reason``,
``store``, ``since`` (a duration, ``2h``) and the bounds ``since_at`` and ``before`` (epoch
seconds). A dry run answers ``before`` too: send it back with the same filter and the
action takes exactly what the dry run counted. As with ``snackvideo dlq``, an unknown id
changes nothing (404 with the ``missing`` ids).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import tornado.web

from worker.deadletter import selection
from worker.deadletter.selection import Breakdown, EntryFilter
from worker.deadletter.store import DeadLetter
from worker.flower_pages.base import ApiHandler
from worker.flower_pages.query import (
    MAX_LIST_LIMIT,
    Choice,
    FieldError,
    read_count,
    read_filter,
    read_ids,
)

DEFAULT_LIST_LIMIT = 50
#: Most entries a dry run lists by id (it counts all of them).
DRY_RUN_IDS = 1_000


class ListApi(ApiHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        values = {
            name: self.get_argument(name, None, escape=False)
            for name in ("reason", "store", "since", "since_at", "before", "limit", "offset")
        }
        try:
            where = read_filter(values, now=await self.blocking(self.redis_now))
            limit = read_count(values, "limit", DEFAULT_LIST_LIMIT, low=1, high=MAX_LIST_LIMIT)
            offset = read_count(values, "offset", 0, low=0, high=10_000_000)
        except FieldError as exc:
            self.fail(400, str(exc))
            return
        found = await self.blocking(
            self.store.find_entries,
            reason=where.reason,
            store_id=where.store_id,
            since=where.since,
            older_than=where.before,
            limit=offset + limit + 1,
        )
        page = found[offset : offset + limit]
        self.send_json(
            {
                "total": await self.blocking(len, self.store),
                "counts_by_reason": await self.blocking(self.store.counts_by_reason),
                "offset": offset,
                "limit": limit,
                "next_offset": offset + limit if len(found) > offset + limit else None,
                "entries": [entry_json(entry) for entry in page],
            }
        )


class EntryApi(ApiHandler):
    @tornado.web.authenticated
    async def get(self, wanted: str) -> None:
        entry = await self.blocking(self.store.find, wanted)
        if entry is None:
            self.fail(404, f"no dead-letter entry {wanted!r}")
            return
        self.send_json(entry_json(entry))


class TakeApi(ApiHandler):
    def initialize(self, action: str) -> None:
        self.action = action

    @tornado.web.authenticated
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            if not isinstance(body, dict):
                raise FieldError("body", "must be a JSON object")
            dry_run = body.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise FieldError("dry_run", "must be true or false")
            choice = await self.read_choice(body)
        except (ValueError, UnicodeDecodeError) as exc:  # FieldError, or not JSON at all
            message = str(exc) if isinstance(exc, FieldError) else f"body: not JSON: {exc}"
            self.fail(400, message)
            return
        if not dry_run and self.application.options.read_only:
            raise tornado.web.HTTPError(403, "Read only mode is enabled")
        entries, missing = await self.blocking(
            selection.select, self.store, ids=choice.ids, where=choice.where
        )
        if missing:
            self.fail(404, "no dead-letter entry: nothing was done", missing=missing)
            return
        if dry_run:
            self.send_json(
                {
                    "dry_run": True,
                    "action": self.action,
                    **counts_json(Breakdown.of(entries)),
                    "before": choice.where.before,
                    "ids": [entry.id for entry in entries[:DRY_RUN_IDS]],
                }
            )
            return
        take = selection.replay if self.action == "replay" else selection.purge
        result = await self.blocking(take, self.store, entries)
        self.send_json(
            {
                "dry_run": False,
                "action": self.action,
                "matched": len(entries),
                **counts_json(Breakdown.of(result.taken)),
                "ids": [entry.id for entry in result.taken],
                "skipped": [{"id": entry.id, "why": why} for entry, why in result.skipped],
            }
        )

    async def read_choice(self, body: dict[str, Any]) -> Choice:
        given = [name for name in ("ids", "filter", "all") if body.get(name) not in (None, False)]
        if len(given) != 1:
            raise FieldError(
                "body", 'say which entries: exactly one of "ids", "filter" or "all": true'
            )
        if given == ["ids"]:
            return Choice(read_ids(body["ids"]), EntryFilter())
        if given == ["all"]:
            if body["all"] is not True:
                raise FieldError("all", "must be true")
            return Choice((), EntryFilter(before=await self.blocking(self.redis_now)))
        raw = body["filter"]
        if not isinstance(raw, dict) or not raw:
            raise FieldError("filter", "must be an object with reason, store, since or before")
        unknown = sorted(set(raw) - {"reason", "store", "since", "since_at", "before"})
        if unknown:
            raise FieldError(f"filter.{unknown[0]}", "unknown field")
        now = await self.blocking(self.redis_now)
        where = read_filter(raw, now=now, prefix="filter.")
        if where.before is None:  # what a dry run counted is what exists now
            where = replace(where, before=now)
        return Choice((), where)


def entry_json(entry: DeadLetter) -> dict[str, Any]:
    return {**entry.to_dict(), "click_id": entry.click_id}


def counts_json(counts: Breakdown) -> dict[str, Any]:
    return {"count": counts.total, "by_reason": counts.by_reason, "by_store": counts.by_store}
