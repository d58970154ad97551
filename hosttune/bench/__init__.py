"""`hosttune bench`: repeated-run stability benchmarks (in-process and over HTTP), statistics, reports."""
