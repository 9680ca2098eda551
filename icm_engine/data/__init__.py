"""Data in: the bundled samples, uploaded tables and the shared real datasets, turned into the
Examples the search sees, with gold kept beside them for evaluation only."""
