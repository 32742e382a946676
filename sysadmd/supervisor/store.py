"""The supervisor's definitions in the database (table ``supervisor_programs``)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable, Dict, List, Optional, Tuple

from sysadmd import migrations
from sysadmd.runtime.db import ensure


class ProgramStore:
    def __init__(self, db: sqlite3.Connection, seconds: Callable[[], float]):
        self.db = db
        self.seconds = seconds
        ensure(db, migrations.SCHEMA)

    def load(self) -> List[Tuple[Dict[str, Any], Optional[str]]]:
        """Every stored definition (as JSON) with the marker of a run the last daemon left."""
        rows = self.db.execute("SELECT definition, marker FROM supervisor_programs ORDER BY name").fetchall()
        return [(json.loads(row["definition"]), row["marker"]) for row in rows]

    def save(self, name: str, definition: Dict[str, Any]) -> None:
        text = json.dumps(definition, separators=(",", ":"), sort_keys=True)
        self.db.execute(
            "INSERT INTO supervisor_programs (name, definition, time_updated) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET definition = excluded.definition, time_updated = excluded.time_updated",
            (name, text, self.seconds()))

    def delete(self, name: str) -> None:
        self.db.execute("DELETE FROM supervisor_programs WHERE name = ?", (name,))

    def set_marker(self, name: str, marker: Optional[str]) -> None:
        self.db.execute("UPDATE supervisor_programs SET marker = ? WHERE name = ?", (marker, name))

    def clear_markers(self) -> None:
        self.db.execute("UPDATE supervisor_programs SET marker = NULL WHERE marker IS NOT NULL")
