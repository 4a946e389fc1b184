"""``barp sweep``: BaRP against the comparison methods over a preference grid, with tables and figures."""
