"""`python -m homelab` runs the command line."""

from homelab.cli import main

if __name__ == "__main__":
    main()
