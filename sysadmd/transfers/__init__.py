"""File transfers tied to jobs (issue 10 items 5 and 6; docs/protocol.md §6.12).

``tokens`` (download tokens, hashed, bound to a job and a user), ``multipart`` (an
incremental multipart/form-data parser that never holds a part in memory), ``backup``
(``config.save`` archives, their validation and staged restore), ``service`` (``core/download``,
the download and upload methods, the spool directory) and ``web`` (``GET /_download/<id>``
and ``POST /_upload`` on the HTTPS site).
"""
