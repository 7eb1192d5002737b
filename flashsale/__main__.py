"""Entry point for ``python -m flashsale``."""

from flashsale.cli import main

if __name__ == "__main__":
    main()
