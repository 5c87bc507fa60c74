"""One module per `nst3d` sub-command; each has register(subparsers) that sets `run`."""
