"""Real paired benchmark sets built from packages this machine's registries serve (Debian), as `folder:` datasets.

Nobody here generated these pairs: children's-software artwork with its descriptions, sound effects with theirs, and
people speaking words and phrases. `python -m benchmarks.realsets.build --out DIR` fetches the pinned packages,
checks their sha256, and writes one folder per set (`pairs.jsonl` + media), byte for byte the same on every run.
"""
