"""Entry point for ``python -m lightning_fair``."""

from lightning_fair.main import main

if __name__ == "__main__":
    main()
