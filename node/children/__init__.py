"""Child VSMs: full `vsmcpd` subprocesses a node spawns, certifies and supervises."""
