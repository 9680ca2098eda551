"""The bottom floor: tasks as data, the settings of a run, the prompt layout, U(D) and the search
itself. It reaches a language model only through the interface in backends/base.py."""
