"""The one job model of sysadmd: every long-running piece of work is a row of ``jobs``.

``model`` (fields, states, outcomes, the wire shape), ``store`` (the table and its small
API for any producer of jobs), ``service`` (events, waiters, log followers, retention),
``rpc`` (``core/get_jobs``, ``core/job_abort``, ``core/job_wait``, ``core/job_log``) and
``query`` (filters and options compiled to SQL).
"""
