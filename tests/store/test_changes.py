"""Which rows a replica copies again for a list of logged changes (stockpipe.store.changes.windows)."""

from __future__ import annotations

import datetime as dt

from stockpipe.store.changes import EVERYTHING, MAX_WINDOW_DAYS, Change, windows

AT = dt.datetime(2025, 10, 10, 22, 0)
D = dt.date(2025, 10, 10)


def change(table, lo, hi, date_from, date_to, change_id=1):
    return Change(change_id, table, lo, hi, date_from, date_to, AT)


def test_a_dailys_chunks_become_one_window_per_table_covering_every_chunk():
    chunks = [change("indicators", lo, hi, D - dt.timedelta(days=7), D, i)
              for i, (lo, hi) in enumerate([("A", "AZ"), ("B", "BZ"), ("C", "CZ")])]
    found, why = windows([change("bars", "A", "CZ", D - dt.timedelta(days=7), D), *chunks])
    assert why == ""
    assert [(w.table, w.where(), w.params) for w in found] == [
        ("bars", "date >= :df AND date <= :dt AND symbol BETWEEN :lo AND :hi",
         {"df": D - dt.timedelta(days=7), "dt": D, "lo": "A", "hi": "CZ"}),
        ("indicators", "date >= :df AND date <= :dt AND symbol BETWEEN :lo AND :hi",
         {"df": D - dt.timedelta(days=7), "dt": D, "lo": "A", "hi": "CZ"}),
    ]
    assert found[0].where(' COLLATE "C"') == 'date >= :df AND date <= :dt AND symbol COLLATE "C" BETWEEN :lo AND :hi'


def test_whole_history_symbols_keep_their_own_ranges():
    found, _ = windows([change("indicators", "A", "CZ", D, None), change("indicators", "BB", "BB", None, D, 2),
                        change("indicators", "Q", "Q", None, D, 3)])
    assert [(w.where(), w.params) for w in found] == [
        ("date >= :df AND symbol BETWEEN :lo AND :hi", {"df": D, "lo": "A", "hi": "CZ"}),
        ("symbol BETWEEN :lo AND :hi", {"lo": "BB", "hi": "BB"}),
        ("symbol BETWEEN :lo AND :hi", {"lo": "Q", "hi": "Q"}),
    ]


def test_what_the_log_cannot_bound_calls_for_a_full_export():
    assert windows([change(EVERYTHING, None, None, None, None)])[0] is None
    assert windows([change("symbols", None, None, None, None)])[0] is None
    assert windows([change("bars", None, None, None, None)])[0] is None
    long_ago = D - dt.timedelta(days=MAX_WINDOW_DAYS + 1)
    found, why = windows([change("indicators", "A", "Z", long_ago, D)])
    assert found is None and f"more than {MAX_WINDOW_DAYS} days" in why
    assert windows([])[0] == []
