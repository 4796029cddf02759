"""Side-by-side benchmark of gserver against the seed's Node servers and references.

Run ``python -m bench`` (``--help`` for options). See bench/README.md.
"""
