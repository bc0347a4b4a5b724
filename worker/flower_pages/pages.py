"""The HTML pages: the list, one entry, and replay or purge as preview, confirm, result.

Every value an entry holds came from outside (a shop's payload, Scalev's answer): the
templates print it with Tornado's escaping (``{{ }}``), never ``{% raw %}``.

Replay and purge are two steps when they act on a filter: ``GET`` shows what matches
("412 entries match: http_404 × 400, no_api_key × 12") and a button naming the count;
``POST`` acts. The preview hands on the filter's exact bounds, ``before`` included (now,
on the Redis clock), so the confirm acts on what the preview counted and not on entries
dead-lettered since. A list of ids (the Replay button of one entry) acts at once.
"""

from __future__ import annotations

from dataclasses import replace

import tornado.web

from worker.deadletter import selection
from worker.deadletter.display import payload_text, utc_time
from worker.deadletter.selection import Breakdown, EntryFilter, TakeResult
from worker.deadletter.store import DeadLetter
from worker.flower_pages.base import PageHandler
from worker.flower_pages.query import Choice, FieldError, read_count, read_filter, read_ids
from worker.keys import entry_id

PAGE_SIZE = 50
#: Entries a preview lists by id (it counts all of them).
PREVIEW_ROWS = 100
FILTER_FIELDS = ("reason", "store", "since")
BOUND_FIELDS = ("since_at", "before")
VERBS = {"replay": ("Replay", "Replayed"), "purge": ("Purge", "Purged")}


class DeadLettersPage(PageHandler):
    """``GET /dead-letters``: newest first, paginated, filtered, counts by reason on top."""

    @tornado.web.authenticated
    async def get(self) -> None:
        values = self.values(*FILTER_FIELDS, "page")
        error = None
        try:
            where = read_filter(values, now=await self.blocking(self.redis_now))
            page = read_count(values, "page", 1, low=1, high=1_000_000)
        except FieldError as exc:
            self.set_status(400)
            error, where, page = str(exc), EntryFilter(), 1
        found = await self.blocking(
            self.store.find_entries,
            reason=where.reason,
            store_id=where.store_id,
            since=where.since,
            limit=page * PAGE_SIZE + 1,
        )
        self.render(
            "dead_letters.html",
            active_tab="dead_letters",
            error=error,
            entries=found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
            page=page,
            more=len(found) > page * PAGE_SIZE,
            counts=await self.blocking(self.store.counts_by_reason),
            total=await self.blocking(len, self.store),
            filters={name: values.get(name) or "" for name in FILTER_FIELDS},
            query=self.query_of(values, FILTER_FIELDS),
            utc_time=utc_time,
            refusal=self.change_refusal(),
        )


class DeadLetterPage(PageHandler):
    """``GET /dead-letters/<entry id or job id>``: the whole entry."""

    @tornado.web.authenticated
    async def get(self, wanted: str) -> None:
        entry = await self.blocking(self.store.find, wanted)
        if entry is None:
            raise tornado.web.HTTPError(404, "No dead-letter entry %r", wanted)
        self.render(
            "dead_letter.html",
            active_tab="dead_letters",
            entry=entry,
            payload=payload_text(entry.payload),
            lineage=lineage(entry),
            utc_time=utc_time,
            refusal=self.change_refusal(),
        )


class TakePage(PageHandler):
    """``/dead-letters/replay`` and ``/dead-letters/purge``: GET previews, POST acts."""

    def initialize(self, action: str) -> None:
        self.action = action

    @tornado.web.authenticated
    async def get(self) -> None:
        choice = await self.read_choice()
        if choice is None:
            return
        if not choice.ids and choice.where.before is None:
            now = await self.blocking(self.redis_now)
            choice = Choice((), replace(choice.where, before=now))
        entries, missing = await self.blocking(
            selection.select, self.store, ids=choice.ids, where=choice.where
        )
        self.render(
            "dead_letters_confirm.html",
            active_tab="dead_letters",
            action=self.action,
            verb=VERBS[self.action][0],
            entries=entries[:PREVIEW_ROWS],
            counts=Breakdown.of(entries),
            missing=missing,
            ids=choice.ids,
            bounds=_bounds(choice.where),
            refusal=self.change_refusal(),
        )

    @tornado.web.authenticated
    async def post(self) -> None:
        self.refuse_when_read_only()
        choice = await self.read_choice()
        if choice is None:
            return
        entries, missing = await self.blocking(
            selection.select, self.store, ids=choice.ids, where=choice.where
        )
        if missing:  # as the CLI does: an id that is not there changes nothing
            raise tornado.web.HTTPError(
                404, "No dead-letter entry %s: nothing was done", ", ".join(map(repr, missing))
            )
        take = selection.replay if self.action == "replay" else selection.purge
        result: TakeResult = await self.blocking(take, self.store, entries)
        self.render(
            "dead_letters_result.html",
            active_tab="dead_letters",
            verb=VERBS[self.action][1],
            counts=Breakdown.of(result.taken),
            taken=result.taken,
            skipped=result.skipped,
        )

    async def read_choice(self) -> Choice | None:
        """The ids or filter of this request; on a bad field, a 400 page and None."""
        values = self.values(*FILTER_FIELDS, *BOUND_FIELDS)
        try:
            ids = read_ids(self.get_arguments("ids"))
            where = read_filter(values, now=await self.blocking(self.redis_now))
        except FieldError as exc:
            self.set_status(400)
            self.render("404.html", message=str(exc))
            return None
        if ids and not where.is_empty():
            self.set_status(400)
            self.render("404.html", message="ids: give entry ids or a filter, not both")
            return None
        return Choice(ids, where)

    def refuse_when_read_only(self) -> None:
        if self.application.options.read_only:
            raise tornado.web.HTTPError(403, "Read only mode is enabled")


def lineage(entry: DeadLetter) -> list[tuple[str, str]]:
    """The job's runs, first to this one: each earlier entry left the queue by a replay
    (that is how the replay count grew), and this one is the job's latest failure."""
    runs = [(entry_id(entry.job_id, n), "replayed") for n in range(entry.replay_count)]
    return [*runs, (entry.id, "this entry")]


def _bounds(where: EntryFilter) -> dict[str, str]:
    """The hidden fields that make the confirm act on what the preview counted."""
    fields = {
        "reason": where.reason,
        "store": where.store_id,
        "since_at": None if where.since is None else repr(where.since),
        "before": None if where.before is None else repr(where.before),
    }
    return {name: value for name, value in fields.items() if value is not None}
