"""SAEBench-style evaluations beyond reconstruction: sparse probing and feature absorption (first-letter task)."""
