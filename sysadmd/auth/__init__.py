"""Authentication: tokens, rights, password checks, registered keys, blacklist."""
