"""``python -m barp`` runs the barp command line."""

from barp.cli import main

if __name__ == "__main__":
    main()
