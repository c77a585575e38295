"""The command line's adapters, one module per sub-command of ``mmnet``.

Each module adds its options (``add_parser``) and turns the parsed arguments into calls of the
library (``run``); the library never sees ``argparse``. A module imports the library only when
its command runs, so that ``mmnet --help`` and a mistyped option answer at once.
"""
