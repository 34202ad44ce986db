"""``python -m mtdmath.experiments SUBCOMMAND [options]`` — see ``--help``."""
from .cli import main

if __name__ == "__main__":
    main()
