"""The history of gate runs: every run's figures kept per commit (`store`, `records`), trends and change points
over them (`changepoints`, `trend`), and what a gate run does with it at its end (`recorder`)."""
