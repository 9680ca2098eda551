"""Running searches: start, step, resume and steer a stored run (runner), in background threads
for the studio (manager), on the model its config names (models), and its labels out (export)."""
