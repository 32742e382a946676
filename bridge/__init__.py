"""sysadm-bridge: the relay between sysadm servers behind NAT and their remote clients."""
