from twisted.application.service import ServiceMaker

sysadmd = ServiceMaker(
    "sysadmd",
    "sysadmd.tap",
    "Remote system administration daemon (JSON RPC over TLS WebSockets and REST).",
    "sysadmd",
)
