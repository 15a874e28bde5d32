"""`python -m peftbench.cli` (and `torchrun -m peftbench.cli`): the same as the peftbench script."""

from peftbench.cli import main

main()
