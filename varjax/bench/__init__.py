"""Benchmarks: training throughput (``throughput``; ``python -m varjax.bench``) and the cost
of the analysis, difficulty probes and lenses (``costs``; ``python -m varjax.bench.analysis``)."""
