"""Offline engine benchmarks, server load generators and reports."""
