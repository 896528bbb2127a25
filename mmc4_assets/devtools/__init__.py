"""Developer tools shared by tests, the offline demo and benchmarks (never used by the assets)."""
