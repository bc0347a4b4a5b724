"""``snackvideo dlq`` takes the job id ``enqueue`` printed, and never lets an entry's text
act on the operator's terminal.

Lookups run against a real Redis (``DeadLetterStore.find``) and through the real command;
the escaping is checked for every code point (``visible``) and then through the real
command with an entry whose response body holds a title-setting OSC and a clear-screen CSI.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
import redis

from tests.queue_helpers import event, queued
from tests.test_cli_dlq import run
from worker.deadletter.store import DeadLetter, DeadLetterStore
from worker.escaping import visible
from worker.keys import entry_id, invalid_entry_id

# -- visible (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # OSC: sets the terminal's title
        ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # CSI: clears the screen, homes the cursor
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("ok\rFAKE", "ok\\rFAKE"),  # CR: would overwrite "ok"
        ("\x07", "\\x07"),  # BEL
        ("\x08\x08\x08", "\\x08\\x08\\x08"),  # backspaces
        ("\x7f", "\\x7f"),  # DEL
        ("\x9b2J", "\\x9b2J"),  # C1 CSI, a clear-screen for 8-bit terminals
        ("\x90q\x9c", "\\x90q\\x9c"),  # C1 DCS ... ST
        ("\x85", "\\x85"),  # C1 NEL, a line break to some terminals
        ("invoice\u202efdp.exe", "invoice\\u202efdp.exe"),  # RIGHT-TO-LEFT OVERRIDE
        ("\u2066x\u2069", "\\u2066x\\u2069"),  # bidi isolates
        ("a\u200bb", "a\\u200bb"),  # ZERO WIDTH SPACE
        ("a\u2028b", "a\\u2028b"),  # LINE SEPARATOR
        ("a\u00a0b", "a\\xa0b"),  # NO-BREAK SPACE: looks like a space, is not one
        ("\U000e0041", "\\U000e0041"),  # TAG LATIN CAPITAL LETTER A (invisible)
        ("a\nb\tc", "a\\nb\\tc"),
        ("", ""),
        ("Kopi Susu ☕ Rp150.000 — ok", "Kopi Susu ☕ Rp150.000 — ok"),
        ('C:\\path "quoted"', 'C:\\path "quoted"'),  # backslashes stay as they are
    ],
)
def test_visible_escapes_what_a_terminal_would_act_on(raw: str, shown: str) -> None:
    assert visible(raw) == shown


def test_visible_multiline_keeps_line_feeds_and_tabs_only() -> None:
    body = "<html>\n\t<title>\x1b]0;pwned\x07</title>\r\n</html>\u202e"
    assert visible(body, multiline=True) == (
        "<html>\n\t<title>\\x1b]0;pwned\\x07</title>\\r\n</html>\\u202e"
    )


def test_every_code_point_comes_out_printable_and_printable_ones_unchanged() -> None:
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        shown = visible(ch)
        assert shown.isprintable(), hex(code)
        if ch.isprintable():
            assert shown == ch, hex(code)
        else:
            assert shown.startswith("\\") and len(shown) > 1, hex(code)


# -- DeadLetterStore.find (real Redis) --------------------------------------------------------


def dead_letter(job_id: str, replay_count: int, *, age: float, **fields: object) -> DeadLetter:
    now = time.time()
    values: dict[str, object] = {
        "store_id": "store_a",
        "payload": event(f"clk-{job_id}-{replay_count}"),
        "reason": "http_404",
        "status_code": 404,
        "error": '{"error": "store not found"}',
        "attempts": 1,
        "enqueued_at": now - age - 60,
        "dead_lettered_at": now - age,
        **fields,
    }
    return DeadLetter(job_id=job_id, replay_count=replay_count, **values)  # type: ignore[arg-type]


def add(store: DeadLetterStore, *entries: DeadLetter) -> None:
    for entry in entries:
        assert store.add(entry)[0], entry.id


def test_find_takes_an_entry_id_or_a_job_id_and_picks_the_latest_entry(
    redis_client: redis.Redis,
) -> None:
    store = DeadLetterStore(redis_client)
    job = "8f0c2a4e-5b1d-4c3e-9a7f-1e2d3c4b5a69"
    # r0 and r1 were replayed (gone); r2 failed again; an unreadable copy parked at r1.
    add(
        store,
        dead_letter(job, 2, age=60),
        DeadLetter(
            job_id=job, store_id="", payload="garbage", reason="invalid_job",
            replay_count=1, id=invalid_entry_id(job, 1), dead_lettered_at=time.time() - 30,
        ),
        # A job whose id merely starts with this one's, and one whose id looks like an entry.
        dead_letter(job + "0", 9, age=10),
        dead_letter(entry_id(job, 7), 0, age=10),
    )  # fmt: skip

    found = store.find(job)
    assert found is not None and found.id == f"{job}-r2" and found.replay_count == 2
    # The exact entry id still names exactly that entry.
    exact = store.find(invalid_entry_id(job, 1))
    assert exact is not None and exact.reason == "invalid_job"
    exact = store.find(f"{job}-r7-r0")
    assert exact is not None and exact.job_id == f"{job}-r7"
    assert store.find("no-such-job") is None
    assert store.find(f"{job}-r5") is None


def test_find_of_the_same_replay_count_picks_the_one_dead_lettered_last(
    redis_client: redis.Redis,
) -> None:
    store = DeadLetterStore(redis_client)
    add(
        store,
        dead_letter("job-t", 0, age=10),
        DeadLetter(
            job_id="job-t", store_id="", payload="garbage", reason="invalid_job",
            id=invalid_entry_id("job-t", 0), dead_lettered_at=time.time() - 300,
        ),
    )  # fmt: skip
    found = store.find("job-t")
    assert found is not None and found.id == "job-t-r0"


def test_find_reads_a_job_id_with_glob_characters_literally(redis_client: redis.Redis) -> None:
    store = DeadLetterStore(redis_client)
    odd = "job[1]*?\\x"
    # "job1-anything-r0" matches the pattern "job[1]*?\x-r*" if it is not escaped.
    add(store, dead_letter("job1-anything\\x", 0, age=20), dead_letter(odd, 3, age=10))
    found = store.find(odd)
    assert found is not None and found.job_id == odd
    assert store.find("job[1]") is None
    assert store.find("job*") is None


# -- the command: job ids -----------------------------------------------------------------------


@pytest.mark.processes
def test_show_replay_and_purge_take_the_job_id_that_enqueue_printed(
    redis_client: redis.Redis, redis_url: str
) -> None:
    store = DeadLetterStore(redis_client)
    job, other = "44954989-5e7b-4f87-a58e-d45901822948", "2099078f-04b2-4879-8965-c07b7d9d2614"
    add(store, dead_letter(job, 2, age=60), dead_letter(other, 0, age=30, reason="no_api_key"))

    shown = run(redis_url, "show", job)
    assert shown.returncode == 0, shown.stderr
    assert f"id:                {job}-r2" in shown.stdout
    assert f"replay with: snackvideo dlq replay {job}-r2" in shown.stdout
    assert json.loads(run(redis_url, "show", job, "--json").stdout)["id"] == f"{job}-r2"

    # The job id and its entry id name one entry: it is replayed once.
    replayed = run(redis_url, "replay", job, f"{job}-r2")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("replayed 1 entry\n")
    [message] = queued(redis_client)
    assert message.kwargs["job_id"] == job and message.kwargs["replay_count"] == 3
    assert store.get(f"{job}-r2") is None

    purged = run(redis_url, "purge", other, "--yes")
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout == "purged 1 entry\n"
    assert len(store) == 0


@pytest.mark.processes
@pytest.mark.parametrize("action", [("show",), ("replay",), ("purge", "--yes")])
def test_an_unknown_id_says_which_forms_are_accepted(
    redis_client: redis.Redis, redis_url: str, action: tuple[str, ...]
) -> None:
    add(DeadLetterStore(redis_client), dead_letter("job-known", 0, age=10))
    done = run(redis_url, action[0], "job-unknown", *action[1:])
    assert done.returncode == 1
    assert "error: no dead-letter entry 'job-unknown': give the job id that enqueue printed" in (
        done.stderr
    )
    assert "<job_id>-r<n>, <job_id>-r<n>-invalid" in done.stderr
    assert len(DeadLetterStore(redis_client)) == 1


# -- the command: what an entry holds is shown, not acted on -------------------------------------

RAW_CONTROLS = ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\u2028")


def hostile_entry() -> DeadLetter:
    return dead_letter(
        "job-hostile",
        0,
        age=5,
        store_id="store_\x1b[8m",
        status_code=400,
        reason="http_400",
        error="bad request \x1b]0;pwned\x07 then \x1b[2J\r\nline two \u202egnp.exe \x9b2J",
        payload=event("clk\n\x1b[31mred\u202e", note="paid\u2028\x07"),
    )


def assert_nothing_raw(text: str) -> None:
    for raw in RAW_CONTROLS:
        assert raw not in text, repr(raw)


@pytest.mark.processes
def test_show_and_list_print_escape_sequences_as_text(
    redis_client: redis.Redis, redis_url: str
) -> None:
    store = DeadLetterStore(redis_client)
    entry = hostile_entry()
    add(store, entry, dead_letter("job-plain", 0, age=50))

    shown = run(redis_url, "show", "job-hostile")
    assert shown.returncode == 0, shown.stderr
    assert_nothing_raw(shown.stdout)
    body = "  bad request \\x1b]0;pwned\\x07 then \\x1b[2J\\r\n  line two \\u202egnp.exe \\x9b2J"
    assert body in shown.stdout
    assert "store_id:          store_\\x1b[8m" in shown.stdout
    assert "click_id:          clk\\n\\x1b[31mred\\u202e" in shown.stdout
    # The payload is JSON: control characters in strings are JSON's \u escapes already.
    assert '"click_id": "clk\\n\\u001b[31mred\\u202e"' in shown.stdout
    assert '"note": "paid\\u2028\\u0007"' in shown.stdout

    table = run(redis_url, "list")
    assert table.returncode == 0, table.stderr
    assert_nothing_raw(table.stdout)
    header, *rows = table.stdout.splitlines()
    assert len(rows) == 2  # the newline in the click_id did not start a row
    assert rows[0].split()[:4] == ["job-hostile-r0", "http_400", "400", "store_\\x1b[8m"]
    assert "clk\\n\\x1b[31mred\\u202e" in rows[0]

    for args in (("replay", "--dry-run", "job-hostile"), ("stats",)):
        done = run(redis_url, *args)
        assert done.returncode == 0, done.stderr
        assert_nothing_raw(done.stdout)
        assert "store_\\x1b[8m" in done.stdout

    # --json stays valid JSON and carries the exact text.
    [listed] = [e for e in json.loads(run(redis_url, "list", "--json").stdout)
                if e["id"] == "job-hostile-r0"]  # fmt: skip
    as_json = json.loads(run(redis_url, "show", "job-hostile", "--json").stdout)
    for data in (listed, as_json):
        assert data["error"] == entry.error
        assert data["payload"] == entry.payload
        assert data["store_id"] == entry.store_id
