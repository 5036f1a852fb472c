#!/usr/bin/env python3
"""Kernel benchmark; same as `q35f bench kernels` (see --help)."""

import sys

from q35f.measure.bench_kernels import main

sys.exit(main())
