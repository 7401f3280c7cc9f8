"""Speed and quality measurements; each script writes its figures to benchmarks/results/."""
