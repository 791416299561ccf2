"""proto <-> domain conversion, one module per service area."""
