"""Dispatcher jobs record their processes' ``SYSADMD_JOB`` marker, the bytes of output
not kept (``cut``) and where each command's output has its gap (``gaps``)."""

from sysadmd.runtime.db import add_column


def apply(db):
    add_column(db, "dispatcher_jobs", "marker", "TEXT NOT NULL DEFAULT ''")
    add_column(db, "dispatcher_jobs", "cut", "INTEGER NOT NULL DEFAULT 0")
    add_column(db, "dispatcher_jobs", "gaps", "TEXT NOT NULL DEFAULT '[]'")
