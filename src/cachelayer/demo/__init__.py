"""``cachelayer demo``: the motivating story, served and measured end to end (docs/demo.md)."""
