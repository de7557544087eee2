"""one_leg: insert and screw one square_table leg into the tabletop (furniture-bench)."""
