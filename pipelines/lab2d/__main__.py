"""``python -m pipelines.lab2d``: see :func:`pipelines.lab2d.comparison.main`."""
from pipelines.lab2d.comparison import main

if __name__ == "__main__":
    main()
