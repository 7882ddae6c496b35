"""The SQLite store's analytics: conversion events per (namespace, YYYYMM) and a month read
back with every user's AI cost from the ledger's month rows, inside the caller's transaction."""

from __future__ import annotations

import sqlite3

from nasca_core.stores._base import AnalyticsEvent, LedgerMonth, MonthCounts, MonthRaw, month_owner


def record_event(c: sqlite3.Connection, namespace: str, event: AnalyticsEvent) -> None:
    ns, month, user = namespace, event.month, event.user_id
    count = ("INSERT INTO an_count VALUES (?, ?, ?, ?) ON CONFLICT (namespace, month, name) "
             "DO UPDATE SET value = value + excluded.value")
    c.execute(count, (ns, month, f"e:{event.kind}", 1))
    blocked = 1 if event.kind == "blocked" else 0
    orders = 1 if event.kind == "purchase_completed" else 0
    c.execute("INSERT INTO an_user VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, month, user) "
              "DO UPDATE SET blocked = blocked + excluded.blocked, orders = orders + excluded.orders",
              (ns, month, user, blocked, orders))
    if not blocked and event.prompt_id:
        for kind in (event.kind, event.warning_step) if event.warning_step else (event.kind,):
            c.execute("INSERT OR IGNORE INTO an_step VALUES (?, ?, ?, ?)", (ns, month, kind, event.prompt_id))
    if orders:
        c.execute(count, (ns, month, f"r:{event.currency}", event.amount_nanos))
        c.execute(count, (ns, month, f"o:{event.currency}", 1))
        c.execute("INSERT INTO an_revenue VALUES (?, ?, ?, ?, ?) ON CONFLICT "
                  "(namespace, month, currency, user) DO UPDATE SET value = value + excluded.value",
                  (ns, month, event.currency, user, event.amount_nanos))


def counts(c: sqlite3.Connection, namespace: str, month: str) -> MonthCounts:
    counters = dict(c.execute("SELECT name, value FROM an_count WHERE namespace = ? AND month = ?",
                              (namespace, month)))
    steps = dict(c.execute("SELECT kind, COUNT(*) FROM an_step WHERE namespace = ? AND month = ? "
                           "GROUP BY kind", (namespace, month)))
    return MonthCounts(counters, steps)


def read_month(c: sqlite3.Connection, namespace: str, month: str, now_ms: int) -> MonthRaw:
    found = counts(c, namespace, month)
    raw = MonthRaw(counters=found.counters, steps=found.steps)
    where = (namespace, month)
    for user, blocked, orders in c.execute(
            "SELECT user, blocked, orders FROM an_user WHERE namespace = ? AND month = ?", where):
        raw.users.add(user)
        if blocked:
            raw.user_blocked[user] = blocked
        if orders:
            raw.user_orders[user] = orders
    for cur, user, value in c.execute(
            "SELECT currency, user, value FROM an_revenue WHERE namespace = ? AND month = ?", where):
        raw.user_revenue[(cur, user)] = value
    # Every user's month row: keys run "<namespace>:{<user>}:m:<month>", so a range of
    # the primary key holds the namespace's users (a report's scan, never a call's path).
    head = f"{namespace}:{{"
    for key, *values in c.execute(
            "SELECT key, c, k, n, ti, tout FROM month WHERE key >= ? AND key < ? AND expires > ?",
            (head, head[:-1] + chr(ord("{") + 1), now_ms)):
        owner = month_owner(key, namespace, month)
        if owner is not None:
            raw.add_ledger(owner, LedgerMonth(*values))
    return raw
