"""bornagain: Born-Again Networks (BAN) and Born-Again Multi-task networks (BAM)."""

__version__ = "0.1.0"
