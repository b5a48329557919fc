"""`python -m qcompiler.codegen.tuned write-defaults` (see __init__.py)."""

import sys

from qcompiler.codegen.tuned import main

sys.exit(main())
