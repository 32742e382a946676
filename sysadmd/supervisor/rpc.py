"""``sysadm/supervisor``: the supervisor's verbs on the API.

Request args ``{"action": VERB, "job": NAME, "data": DEFINITION}`` (``job`` for every
verb but ``list`` and ``restart``; ``data`` for ``push``, a JSON object).  The reply is
``{"result": <the seed's response kind>, ...}``:

* ``{"result": "success"}`` / ``{"result": "redundant"}``;
* ``status``: ``{"result": "status", "job": NAME, "data": {state, pid, uptime, …}}``;
* ``pull``: ``{"result": "file", "job": NAME, "data": <definition>}``;
* ``list``: ``{"result": "list", "data": [names], "programs": [status, …]}``.

``fail`` is an error reply: 403 when the session has limited access and the verb
changes something, 404 for an unknown program, 400 otherwise; ``invalid`` (an unknown
action) is 400.
"""

from __future__ import annotations

from typing import Any, Dict

from sysadmd.api import require_full_access
from sysadmd.session import Session
from sysadmd.supervisor.core import READ_VERBS, VERBS, Reply, Supervisor
from sysadmd.wire.envelope import ApiError, type_name


class SupervisorApi:
    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

    def __call__(self, session: Session, request: Any) -> Any:
        args = request.args
        if not isinstance(args, dict):
            raise ApiError("400", f"args must be an object with 'action' (one of: {', '.join(VERBS)}), "
                                  f"got {type_name(args)}")
        action = args.get("action")
        if not isinstance(action, str) or action not in VERBS:
            raise ApiError("400", f"args need 'action', one of: {', '.join(VERBS)}; got {repr(action)[:40]}")
        if action not in READ_VERBS:
            require_full_access(session, f"sysadm/supervisor {action}")
        name = args.get("job")
        if action not in ("list", "restart") and not isinstance(name, str):
            raise ApiError("400", f"sysadm/supervisor {action} needs 'job': the program name (a string)")
        data = args.get("data")
        if action == "push" and not isinstance(data, dict):
            raise ApiError("400", f"sysadm/supervisor push needs 'data': the definition (an object), "
                                  f"got {type_name(data)}")
        identity = session.identity
        actor = f"{identity.user if identity else '?'}@{session.peer}"
        d = self.supervisor.handle(action, name, data, full_access=bool(identity and identity.full_access),
                                   actor=actor)
        return d.addCallback(self._reply, action)

    def _reply(self, reply: Reply, action: str) -> Dict[str, Any]:
        if reply.status in ("fail", "invalid"):
            code = "404" if reply.error.startswith("no program named") else "400"
            raise ApiError(code, reply.error)
        out: Dict[str, Any] = {"result": reply.status}
        if reply.status == "status":
            out["job"] = reply.data.get("name")
            out["data"] = reply.data
        elif reply.status == "file":
            out["job"] = reply.job
            out["data"] = reply.data
        elif reply.status == "list":
            out["data"] = reply.data
            out["programs"] = self.supervisor.statuses()
        return out


def route(api: Any, supervisor: Supervisor) -> SupervisorApi:
    handler = SupervisorApi(supervisor)
    api.add("sysadm", "supervisor", handler, limited="read")
    return handler
