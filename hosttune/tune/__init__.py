"""`hosttune tune`: choose an instance's inference settings by measurement (docs/tune.md)."""
