"""Testing gserver and handlers written for it."""
