"""The format in numbers (docs/FORMAT.md): block sizes, format ids, bits per weight, and the
exact memory of whole models in each format. Imports nothing else of q35f."""
