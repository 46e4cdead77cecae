"""`python -m mmib_cli` runs the `mmib` command line."""
from mmib_cli.cli import main

if __name__ == "__main__":
    main()
