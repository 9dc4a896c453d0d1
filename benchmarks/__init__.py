"""Speed and memory benchmarks of egregora.database, measured as ratios against baselines
run side by side on the same rows. Run ``python -m benchmarks run --sizes default``; see
``benchmarks/README.md``."""
