"""``config.save`` archives and their restore (``config.upload``).

Layout of the archive (an uncompressed POSIX tar, members in this order)::

    MANIFEST.json          {"format": "sysadmd-backup", "version": 1, "created": <epoch s>,
                            "schema": <sysadmd.sqlite schema version>,
                            "files": {"<member>": {"size": N, "sha256": "<hex>"}, ...}}
    db/sysadmd.sqlite      SQLite online backup of the daemon's database (consistent while
                           the daemon runs)
    config/sysadmd.conf    the config file the daemon was started with (if any)
    keys/<name>            key material of the state dir that exists: server.crt, server.key
                           (TLS), enc_pub.pem, enc.key (key-login encryption), bridge_key.pem

Restore validates everything before anything changes: only these member names, regular
files only, each under its size bound, sizes and SHA-256 as the manifest says, the database
passes ``PRAGMA integrity_check`` and its schema is not newer than this daemon's.  A valid
archive is staged in ``<state_dir>/restore/pending/`` and applied at the next start, before
the database is opened (:func:`apply_pending`); every file it replaces is kept in
``<state_dir>/restore/replaced-<time>/``.  Applying at start (not at once) means no live
connection, job or token ever sees a half-replaced state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
import time
from typing import Any, Dict, Optional

FORMAT = "sysadmd-backup"
VERSION = 1
DB_MEMBER = "db/sysadmd.sqlite"
CONFIG_MEMBER = "config/sysadmd.conf"
KEY_FILES = ("server.crt", "server.key", "enc_pub.pem", "enc.key", "bridge_key.pem")
KEY_MAX = 64 * 1024
CONFIG_MAX = 1024 * 1024
MANIFEST_MAX = 64 * 1024
CHUNK = 1024 * 1024


class BackupError(ValueError):
    pass


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _schema_version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def save(db_path: str, state_dir: str, config_path: str, out_path: str, work_dir: str) -> Dict[str, Any]:
    """Write a backup archive to *out_path* (runs in a thread: it opens its own
    connection); what it holds."""
    tmp_db = os.path.join(work_dir, f"backup-{os.getpid()}-{time.monotonic_ns()}.sqlite")
    try:
        src = sqlite3.connect(db_path, timeout=10.0)
        dst = sqlite3.connect(tmp_db)
        try:
            src.backup(dst, pages=1024)
            schema = _schema_version(dst)
        finally:
            dst.close()
            src.close()
        members = [(DB_MEMBER, tmp_db)]
        if config_path and os.path.isfile(config_path):
            members.append((CONFIG_MEMBER, config_path))
        for name in KEY_FILES:
            path = os.path.join(state_dir, name)
            if os.path.isfile(path):
                members.append((f"keys/{name}", path))
        files = {name: {"size": os.path.getsize(path), "sha256": _sha256_file(path)} for name, path in members}
        manifest = json.dumps({"format": FORMAT, "version": VERSION, "created": time.time(), "schema": schema,
                               "files": files}, sort_keys=True, indent=1).encode("utf-8")
        with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("MANIFEST.json")
            info.size, info.mode, info.mtime = len(manifest), 0o600, int(time.time())
            import io
            tar.addfile(info, io.BytesIO(manifest))
            for name, path in members:
                info = tar.gettarinfo(path, arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o600
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        return {"files": sorted(files), "schema": schema}
    finally:
        if os.path.exists(tmp_db):
            os.unlink(tmp_db)


def _bound(name: str, db_max: int) -> Optional[int]:
    if name == "MANIFEST.json":
        return MANIFEST_MAX
    if name == DB_MEMBER:
        return db_max
    if name == CONFIG_MEMBER:
        return CONFIG_MAX
    if name.startswith("keys/") and name[5:] in KEY_FILES:
        return KEY_MAX
    return None


def validate_and_stage(archive: str, stage_dir: str, db_max: int, max_schema: int) -> Dict[str, Any]:
    """Check *archive* and extract it into *stage_dir* (created fresh); what it holds.
    :class:`BackupError` names the first problem; nothing is staged then."""
    if os.path.exists(stage_dir):
        shutil.rmtree(stage_dir)
    os.makedirs(stage_dir, mode=0o700)
    try:
        return _stage(archive, stage_dir, db_max, max_schema)
    except BaseException:
        shutil.rmtree(stage_dir, ignore_errors=True)
        raise


def _stage(archive: str, stage_dir: str, db_max: int, max_schema: int) -> Dict[str, Any]:
    try:
        tar = tarfile.open(archive, "r:")
    except (tarfile.TarError, OSError) as e:
        raise BackupError(f"not a config.save archive (an uncompressed tar): {e}") from None
    seen: Dict[str, Dict[str, Any]] = {}
    manifest: Optional[Dict[str, Any]] = None
    with tar:
        for count, info in enumerate(tar):
            if count > 2 + len(KEY_FILES):
                raise BackupError("archive has more members than a config.save archive can have")
            name = info.name
            bound = _bound(name, db_max)
            if bound is None:
                raise BackupError(f"archive member {name[:100]!r} is not part of a config.save archive "
                                  f"(expected MANIFEST.json, {DB_MEMBER}, {CONFIG_MEMBER}, keys/<{'|'.join(KEY_FILES)}>)")
            if not info.isreg():
                raise BackupError(f"archive member {name!r} is not a regular file")
            if name in seen or (name == "MANIFEST.json" and manifest is not None):
                raise BackupError(f"archive member {name!r} appears twice")
            if info.size > bound:
                raise BackupError(f"archive member {name!r} is {info.size} bytes; at most {bound} allowed")
            src = tar.extractfile(info)
            if name == "MANIFEST.json":
                if seen:
                    raise BackupError("MANIFEST.json must be the archive's first member")
                try:
                    manifest = json.loads(src.read(MANIFEST_MAX + 1).decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as e:
                    raise BackupError(f"MANIFEST.json is not valid JSON: {e}") from None
                if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
                        or manifest.get("version") != VERSION or not isinstance(manifest.get("files"), dict):
                    raise BackupError(f"MANIFEST.json is not a {FORMAT} version {VERSION} manifest")
                continue
            if manifest is None:
                raise BackupError("MANIFEST.json must be the archive's first member")
            target = os.path.join(stage_dir, name.replace("/", "__"))
            h = hashlib.sha256()
            size = 0
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: src.read(CHUNK), b""):
                    size += len(block)
                    if size > bound:
                        raise BackupError(f"archive member {name!r} is larger than {bound} bytes")
                    h.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            seen[name] = {"size": size, "sha256": h.hexdigest()}
    if manifest is None:
        raise BackupError("archive has no MANIFEST.json")
    if DB_MEMBER not in seen:
        raise BackupError(f"archive has no {DB_MEMBER}")
    if manifest["files"] != seen:
        for name in sorted(set(manifest["files"]) | set(seen)):
            if manifest["files"].get(name) != seen.get(name):
                raise BackupError(f"archive member {name!r} does not match MANIFEST.json (size or SHA-256 differ, "
                                  "or it is missing)")
    db_copy = os.path.join(stage_dir, DB_MEMBER.replace("/", "__"))
    try:
        conn = sqlite3.connect(f"file:{db_copy}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchall()
            schema = _schema_version(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise BackupError(f"{DB_MEMBER} is not a SQLite database: {e}") from None
    if result != [("ok",)]:
        raise BackupError(f"{DB_MEMBER} fails PRAGMA integrity_check: {str(result[0][0])[:200]}")
    if schema > max_schema:
        raise BackupError(f"{DB_MEMBER} has schema version {schema}, newer than this sysadmd's {max_schema}")
    with open(os.path.join(stage_dir, "READY"), "w") as f:
        json.dump({"files": sorted(seen), "schema": schema}, f)
    return {"files": sorted(seen), "schema": schema}


def apply_pending(state_dir: str, config_path: str = "", db_name: str = "sysadmd.sqlite") -> Optional[str]:
    """Apply a restore staged by ``config.upload`` (called at start, before the database is
    opened); the directory holding the replaced files, or ``None`` if nothing was pending."""
    stage = os.path.join(state_dir, "restore", "pending")
    if not os.path.isfile(os.path.join(stage, "READY")):
        return None
    keep = os.path.join(state_dir, "restore", time.strftime("replaced-%Y%m%dT%H%M%S", time.gmtime()))
    os.makedirs(keep, mode=0o700, exist_ok=True)
    targets = {DB_MEMBER: os.path.join(state_dir, db_name)}
    if config_path:
        targets[CONFIG_MEMBER] = config_path
    for name in KEY_FILES:
        targets[f"keys/{name}"] = os.path.join(state_dir, name)
    for member, target in targets.items():
        staged = os.path.join(stage, member.replace("/", "__"))
        if not os.path.isfile(staged):
            continue
        if os.path.exists(target):
            shutil.copy2(target, os.path.join(keep, member.replace("/", "__")))
        for suffix in ("-wal", "-shm", "-journal"):
            if member == DB_MEMBER and os.path.exists(target + suffix):
                shutil.move(target + suffix, os.path.join(keep, "db__sysadmd.sqlite" + suffix))
        tmp = target + ".restore-tmp"
        shutil.copyfile(staged, tmp)
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    shutil.rmtree(stage)
    return keep
