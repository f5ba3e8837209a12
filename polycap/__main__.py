"""`python -m polycap`: the same command line as the `polycap` script."""
from polycap.pipelines.cli import entry

entry()
