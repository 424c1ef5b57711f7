"""isorund: the isorun daemon. See README.md and DESIGN.md."""
__version__ = "0.1.0"
