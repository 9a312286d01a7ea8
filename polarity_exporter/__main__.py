"""`python -m polarity_exporter` runs the same CLI as the `polarity-exporter` script."""

from polarity_exporter.cli import main

if __name__ == "__main__":
    main()
