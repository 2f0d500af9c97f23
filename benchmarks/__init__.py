"""The evidence and cost benchmarks of gradproj (not installed with it). Run each script as a
module from the repository root: ``python -m benchmarks.bench_select --quick``."""
