"""The fuzz campaign of issue 13: mutated model files, misuse of the Python API and hostile
requests against `q35f serve`, each run where a crash, hang or runaway allocation cannot hurt the
caller (forked children with an address-space cap and a timeout; a server on 127.0.0.1 only).

    seeds      tiny valid models written here (HF directory, q35f directory, GGUF file)
    mutate     one mutator family per format, each a seeded function seed -> mutated copy
    sandbox    the fork server: runs one task per forked child and classifies the outcome
    tasks      what a child does: load a model and generate, or make one misuse call
    misuse     the catalogue of misuse calls of the public API
    hostile    the attack on a `q35f serve` subprocess
    campaign   ties them together and tallies the figures (bench/fuzz.py is its command line)
"""
