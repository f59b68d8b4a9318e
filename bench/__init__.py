"""Benchmarks of saerun against its peers (SAELens, dictionary_learning, sparsify).

`python -m bench --setup` builds one virtualenv per peer under bench/.venvs/ (their pins
conflict); `python -m bench --quick` runs saerun and each peer in alternating subprocesses on
identical inputs and prints one JSON line per comparison; `--write` rewrites BENCHMARKS.md.
Nothing here is imported by saerun.
"""
