"""dora nodes: each module is a thin adapter (``main``) over a pure core class."""
