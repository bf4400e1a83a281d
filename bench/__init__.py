"""Benchmarks: repeatable measurements of quality and speed, results in bench/results/."""
