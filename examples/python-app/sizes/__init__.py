"""Human-readable file sizes: a small package of this project, shipped to the nodes."""
