from twisted.application.service import ServiceMaker

sysadm_bridge = ServiceMaker(
    "sysadm-bridge",
    "bridge.tap",
    "Relay between sysadmd servers behind NAT and their remote clients.",
    "sysadm-bridge",
)
