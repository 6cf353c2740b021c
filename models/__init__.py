"""Networks, their loaders and the exact Gaussian-mixture oracle."""
