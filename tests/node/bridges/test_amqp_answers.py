"""The remembered answers of AMQP calls (node/bridges/amqp_answers.py) on a real store:
on disk before `remember` returns, batched, kept across a reopen, bounded, and a row that
is not one of ours refused and deleted, never a crash."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from vsmcp.node.bridges import amqp_answers
from vsmcp.node.bridges.amqp_answers import AnswersUnreadable, RememberedAnswers
from vsmcp.node.store.database import Store


def _answer(i: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": i, "result": {"n": i}}).encode()


async def _rows(store: Store) -> dict[str, bytes]:
    async with store.conn.execute("SELECT key, body FROM amqp_answers") as cur:
        return {str(k): bytes(b) for k, b in await cur.fetchall()}


async def test_an_answer_is_on_disk_when_remember_returns_and_survives_a_reopen(
    tmp_path: Path,
) -> None:
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        await answers.remember("k1", _answer(1))
        assert await _rows(store) == {"k1": _answer(1)}
        await answers.close()
    async with Store.open(tmp_path) as store:
        again = await RememberedAnswers.open(store)
        assert again.get("k1") == _answer(1)
        assert again.get("k2") is None


async def test_answers_remembered_together_share_a_write(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        await asyncio.gather(*(answers.remember(f"k{i}", _answer(i)) for i in range(200)))
        assert len(await _rows(store)) == 200
        # The first write takes the first answer; the rest wait for it and go in one or
        # two more (never one per answer).
        assert answers.writes <= 3
        await answers.close()


async def test_the_oldest_go_from_memory_and_from_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amqp_answers, "REMEMBERED_ANSWERS", 3)
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        for i in range(5):
            await answers.remember(f"k{i}", _answer(i))
        assert [answers.get(f"k{i}") is not None for i in range(5)] == [False, False] + [True] * 3
        await answers.remember("k5", _answer(5))  # its write deletes what was evicted
        assert sorted(await _rows(store)) == ["k3", "k4", "k5"]
        await answers.close()


async def test_answers_older_than_the_bound_are_forgotten_at_open(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        await answers.remember("old", _answer(1))
        await answers.remember("young", _answer(2))
        await answers.close()
        too_old = int((time.time() - amqp_answers.REMEMBER_FOR_S - 60) * 1000)
        await store.conn.execute("UPDATE amqp_answers SET ts_ms = ? WHERE key = 'old'", (too_old,))
        again = await RememberedAnswers.open(store)
        assert again.get("old") is None and again.get("young") == _answer(2)
        assert sorted(await _rows(store)) == ["young"]


async def test_rows_that_are_not_answers_are_refused_and_deleted(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        await answers.remember("good", _answer(1))
        await answers.close()
        now_ms = int(time.time() * 1000)
        bad = [
            ("not-json", now_ms, b"\xff\x00garbage"),
            ("not-an-answer", now_ms, b'{"jsonrpc": "2.0", "method": "x"}'),
            ("x" * (amqp_answers.MAX_KEY_CHARS + 1), now_ms, _answer(2)),
            ("text-ts", "yesterday", _answer(3)),
            ("text-body", now_ms, _answer(4).decode()),
        ]
        await store.conn.executemany(
            "INSERT INTO amqp_answers (key, ts_ms, body) VALUES (?, ?, ?)", bad
        )
        again = await RememberedAnswers.open(store)
        assert again.refused_rows == len(bad)
        assert len(again) == 1 and again.get("good") == _answer(1)
        assert list(await _rows(store)) == ["good"]


async def test_an_oversized_row_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        await answers.remember("big", _answer(1) + b" " * 100)
        await answers.close()
        monkeypatch.setattr(amqp_answers, "REMEMBERED_BYTES", 64)
        again = await RememberedAnswers.open(store)
        assert again.refused_rows == 1 and again.get("big") is None


async def test_a_failed_write_still_returns_and_is_counted(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        await store.conn.execute("DROP TABLE amqp_answers")  # every write now fails
        await answers.remember("k", _answer(1))
        assert answers.not_remembered == 1
        assert answers.get("k") == _answer(1)  # still answered from memory
        await answers.close()


async def test_a_write_to_a_closed_store_still_returns_and_is_counted(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
    await asyncio.wait_for(answers.remember("k", _answer(1)), 10)
    assert answers.not_remembered == 1 and answers.get("k") == _answer(1)
    await answers.close()


async def test_a_table_that_is_not_ours_is_made_again(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        await store.conn.execute("CREATE TABLE amqp_answers (something TEXT)")
        answers = await RememberedAnswers.open(store)
        assert answers.refused_rows == 1 and len(answers) == 0
        await answers.remember("k", _answer(1))
        assert await _rows(store) == {"k": _answer(1)}
        await answers.close()


async def test_an_answer_evicted_before_its_write_gets_no_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amqp_answers, "REMEMBERED_ANSWERS", 1)
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        async with store.transaction():  # the store busy: the answers wait for one write
            # k1 evicts k0, k2 evicts k1: both are gone before their batch is written.
            tasks = [asyncio.create_task(answers.remember(f"k{i}", _answer(i))) for i in range(3)]
            await asyncio.sleep(0)  # one turn of the loop: each keeps its answer
            assert len(answers) == 1
        await asyncio.gather(*tasks)
        assert sorted(await _rows(store)) == ["k2"]
        await answers.close()


async def test_keys_evicted_in_a_failed_write_are_deleted_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amqp_answers, "REMEMBERED_ANSWERS", 1)
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        await answers.remember("k0", _answer(0))
        await store.conn.execute(
            "CREATE TRIGGER full BEFORE INSERT ON amqp_answers "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        await answers.remember("k1", _answer(1))  # evicts k0; the write fails
        assert answers.not_remembered == 1
        await store.conn.execute("DROP TRIGGER full")
        await answers.remember("k2", _answer(2))
        assert sorted(await _rows(store)) == ["k2"]
        await answers.close()


async def test_a_table_of_ours_that_cannot_be_read_is_kept_and_the_open_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Store.open(tmp_path) as store:
        answers = await RememberedAnswers.open(store)
        await answers.remember("k", _answer(1))
        await answers.close()

        async def io_error(_store: object) -> list[object]:
            # What SQLite raises on a failing disk (the read, not the table, is broken).
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(amqp_answers, "_load", io_error)
        with pytest.raises(AnswersUnreadable, match="disk I/O error"):
            await RememberedAnswers.open(store)
        assert await _rows(store) == {"k": _answer(1)}  # nothing dropped
