"""Model versions, aliases, datasets and jobs on disk: atomic and immutable."""
