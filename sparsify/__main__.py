"""``python -m sparsify`` (and ``torchrun ... -m sparsify finetune ...``) runs the command line."""

import sys

from sparsify.cli import main

sys.exit(main())
