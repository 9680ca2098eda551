"""Are the labels any good: the gold-labelled comparison of methods (icm eval), cheap baseline
labelers, one run's report, and the trust checks that need no gold."""
