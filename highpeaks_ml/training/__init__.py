"""Algorithm catalogue, datasets, and fit -> evaluate -> export -> verify, in worker processes."""
