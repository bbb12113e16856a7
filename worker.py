#!/usr/bin/env python
"""`python worker.py --study NAME [--storage URL] ...`: the same code as `hpsearch worker`."""

import sys

from hpsearch.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
